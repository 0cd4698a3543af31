"""Greedy generation and parameter counting."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from deltajax.models.language_model import LanguageModel


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def _generate(model, params, prompt_BT, max_new_tokens):
    B, T = prompt_BT.shape
    cache = model.init_cache(B, T + max_new_tokens)
    logits_BTV, cache = model.apply({"params": params}, prompt_BT, cache, method=model.extend)
    first_B = jnp.argmax(logits_BTV[:, -1], axis=-1).astype(prompt_BT.dtype)

    def step(carry, _):
        token_B, cache = carry
        logits_BV, cache = model.apply({"params": params}, token_B, cache, method=model.decode_step)
        return (jnp.argmax(logits_BV, axis=-1).astype(token_B.dtype), cache), token_B

    _, new_NB = jax.lax.scan(step, (first_B, cache), None, length=max_new_tokens)
    return jnp.concatenate([prompt_BT, new_NB.T], axis=1)


def generate(model: LanguageModel, params, prompt_BT: jax.Array, max_new_tokens: int) -> jax.Array:
    """Greedy decoding: the prompt in one cached forward, then one decode_step per new token.
    Returns [B, T + max_new_tokens] tokens."""
    if prompt_BT.ndim != 2 or prompt_BT.shape[1] < 1:
        raise ValueError(f"prompt must have shape [batch, time >= 1], got {prompt_BT.shape}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    return _generate(model, params, jnp.asarray(prompt_BT, jnp.int32), max_new_tokens)


def count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
