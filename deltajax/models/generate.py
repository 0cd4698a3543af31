"""Greedy generation and parameter counting."""

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from deltajax.models.language_model import LanguageModel, check_tokens


def _greedy(logits_BV, dtype):
    # NaN logits (traced bad input, see LanguageModel) would argmax to token 0, a plausible
    # token: -1, outside every vocabulary, marks them instead (and keeps the later steps NaN).
    token_B = jnp.argmax(logits_BV, axis=-1)
    return jnp.where(jnp.any(jnp.isnan(logits_BV), axis=-1), -1, token_B).astype(dtype)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def _generate(model, params, prompt_BT, max_new_tokens):
    B, T = prompt_BT.shape
    cache = model.init_cache(B, T + max_new_tokens)
    logits_BTV, cache = model.apply({"params": params}, prompt_BT, cache, method=model.extend)
    first_B = _greedy(logits_BTV[:, -1], prompt_BT.dtype)

    def step(carry, _):
        token_B, cache = carry
        logits_BV, cache = model.apply({"params": params}, token_B, cache, method=model.decode_step)
        return (_greedy(logits_BV, token_B.dtype), cache), token_B

    _, new_NB = jax.lax.scan(step, (first_B, cache), None, length=max_new_tokens)
    return jnp.concatenate([prompt_BT, new_NB.T], axis=1)


def generate(model: LanguageModel, params, prompt_BT: jax.Array, max_new_tokens: int) -> jax.Array:
    """Greedy decoding: the prompt in one cached forward, then one decode_step per new token.

    prompt_BT: [batch, time >= 1] integer token ids in [0, vocab_size). max_new_tokens: a
    positive integer (Python or NumPy). The cache holds time + max_new_tokens positions, so it
    always fits. Returns [B, T + max_new_tokens] int32 tokens. Called under jit with a prompt
    outside the vocabulary, the new tokens are -1 (the logits are NaN).
    """
    if not isinstance(model, LanguageModel):
        raise ValueError(f"model must be a deltajax.models.LanguageModel, got "
                         f"{type(model).__name__}")
    if isinstance(params, Mapping) and set(params) == {"params"}:
        raise ValueError("params must be the parameter tree, variables['params'], not the "
                         "variables dict {'params': ...} that model.init returns")
    if (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer))
            or max_new_tokens < 1):
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if jnp.ndim(prompt_BT) != 2 or jnp.shape(prompt_BT)[1] < 1:
        raise ValueError(f"prompt_BT must have shape [batch, time >= 1], got "
                         f"{jnp.shape(prompt_BT)}")
    check_tokens(prompt_BT, model.config.vocab_size, "prompt_BT")
    return _generate(model, params, jnp.asarray(prompt_BT, jnp.int32), int(max_new_tokens))


def count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
