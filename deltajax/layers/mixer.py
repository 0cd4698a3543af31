"""The Mixer protocol: what LanguageModel asks of a token mixer."""

from typing import Any, Optional, Protocol, runtime_checkable

import jax


@runtime_checkable
class Mixer(Protocol):
    """A causal token mixer [B, T, D] -> [B, T, D] that can continue a cached sequence.

    extend(x, cache) on the tokens after those cached gives what __call__ on the whole sequence
    gives at those positions; T = 1 is a decode step. init_cache(batch, max_len) is the cache of
    an empty sequence and needs no parameters (it is called on an unbound module). A cache is a
    pytree of arrays whose shapes do not change with the tokens appended.
    __call__(x, segment_ids_BT) with packed sequences ([B, T] non-decreasing ids) gives what each
    segment gives alone: no state, convolution tap or attention crosses a segment start.
    """

    def __call__(self, x_BTD: jax.Array, segment_ids_BT: Optional[jax.Array] = None
                 ) -> jax.Array: ...

    def extend(self, x_BTD: jax.Array, cache: Any) -> tuple[jax.Array, Any]: ...

    def init_cache(self, batch: int, max_len: int) -> Any: ...


def head_dims(d_model: int, num_heads: int, head_dim=None, expand_v=1) -> tuple[int, int]:
    """(key, value) dims of a head: head_dim, by default d_model // num_heads (then num_heads
    must divide d_model), and expand_v times that (FLA's expand_v, which may be a fraction
    such as 0.5 when the product is a whole number)."""
    if head_dim is None and d_model % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide d_model={d_model}")
    key_dim = head_dim or d_model // num_heads
    value_dim = key_dim * expand_v
    if value_dim != int(value_dim) or value_dim < 1:
        raise ValueError(f"expand_v={expand_v} times the head dim {key_dim} must be a positive "
                         f"whole number, got {value_dim}")
    return key_dim, int(value_dim)


def value_heads(num_heads: int, num_v_heads=None) -> int:
    """The value heads: num_heads, or num_v_heads, a multiple of num_heads whose groups of
    num_v_heads // num_heads value heads share a query/key head (FLA's grouped value heads)."""
    if num_v_heads is None:
        return num_heads
    if num_v_heads % num_heads:
        raise ValueError(f"num_v_heads={num_v_heads} must be a multiple of "
                         f"num_heads={num_heads}")
    return num_v_heads
