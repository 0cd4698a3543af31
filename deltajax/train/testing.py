"""A tiny causal LM for the trainer's tests and benchmarks (experiments/bench_train.py):
embedding, a causal running-mean mixer, norm, head. No deltajax layer: it isolates the trainer."""

import flax.linen as nn
import jax.numpy as jnp


class TinyLM(nn.Module):
    """tokens [B, T] -> float32 logits [B, T, vocab]; position t sees tokens 1..t only."""

    vocab_size: int
    d_model: int = 16

    @nn.compact
    def __call__(self, tokens_BT):
        x_BTD = nn.Embed(self.vocab_size, self.d_model, name="embed")(tokens_BT)
        steps_T1 = jnp.arange(1, tokens_BT.shape[1] + 1, dtype=x_BTD.dtype)[:, None]
        prefix_mean_BTD = jnp.cumsum(x_BTD, axis=1) / steps_T1[None]
        x_BTD = x_BTD + nn.Dense(self.d_model, name="mix")(
            jnp.concatenate([x_BTD, prefix_mean_BTD], axis=-1))
        x_BTD = x_BTD + nn.Dense(self.d_model, name="mlp")(nn.gelu(x_BTD))
        x_BTD = nn.LayerNorm(name="norm")(x_BTD)
        return nn.Dense(self.vocab_size, name="head")(x_BTD).astype(jnp.float32)
