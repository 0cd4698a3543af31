"""Masked next-token cross-entropy: positions whose target is IGNORE_INDEX carry no loss."""

import jax
import jax.numpy as jnp
import optax

from deltajax.data.synthetic import IGNORE_INDEX  # the MQAR convention


def masked_sums(logits_BTV: jax.Array, targets_BT: jax.Array) -> dict:
    """Sums, not means, so microbatches and devices add up to the full batch's mean exactly:
    {"loss_sum", "correct_sum", "count"} over positions with targets != IGNORE_INDEX."""
    valid_BT = targets_BT != IGNORE_INDEX
    safe_targets_BT = jnp.where(valid_BT, targets_BT, 0)
    logits_BTV = logits_BTV.astype(jnp.float32)  # softmax in float32 whatever the compute dtype
    xent_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, safe_targets_BT)
    correct_BT = jnp.argmax(logits_BTV, axis=-1) == safe_targets_BT
    return {
        "loss_sum": jnp.sum(jnp.where(valid_BT, xent_BT, 0.0)),
        "correct_sum": jnp.sum(jnp.where(valid_BT, correct_BT, False).astype(jnp.float32)),
        "count": jnp.sum(valid_BT.astype(jnp.float32)),
    }


def means(sums: dict) -> dict:
    """loss and accuracy from masked_sums (0 where no position counts, never NaN)."""
    count = jnp.maximum(sums["count"], 1.0)
    return {"loss": sums["loss_sum"] / count, "accuracy": sums["correct_sum"] / count}
