"""The Mixer protocol: what LanguageModel asks of a token mixer."""

from typing import Any, Protocol, runtime_checkable

import jax


@runtime_checkable
class Mixer(Protocol):
    """A causal token mixer [B, T, D] -> [B, T, D] that can continue a cached sequence.

    extend(x, cache) on the tokens after those cached gives what __call__ on the whole sequence
    gives at those positions; T = 1 is a decode step. init_cache(batch, max_len) is the cache of
    an empty sequence and needs no parameters (it is called on an unbound module). A cache is a
    pytree of arrays whose shapes do not change with the tokens appended.
    """

    def __call__(self, x_BTD: jax.Array) -> jax.Array: ...

    def extend(self, x_BTD: jax.Array, cache: Any) -> tuple[jax.Array, Any]: ...

    def init_cache(self, batch: int, max_len: int) -> Any: ...


def head_dims(d_model: int, num_heads: int, head_dim=None, expand_v: int = 1) -> tuple[int, int]:
    """(key, value) dims of a head: head_dim, by default d_model // num_heads (then num_heads
    must divide d_model), and expand_v times that."""
    if head_dim is None and d_model % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide d_model={d_model}")
    key_dim = head_dim or d_model // num_heads
    return key_dim, key_dim * expand_v
