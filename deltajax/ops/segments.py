"""Helpers for packed sequences (`segment_ids`)."""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from deltajax.ops import checks


def check_segment_ids(segment_ids, shape_BT: tuple[int, int],
                      name: str = "segment_ids") -> Optional[jax.Array]:
    """segment_ids must be integers of shape [batch, time], non-decreasing along time. Concrete
    violations raise a ValueError naming `name`; traced ones give the flag that the caller turns
    into NaN (checks.poison)."""
    if tuple(jnp.shape(segment_ids)) != tuple(shape_BT):
        raise ValueError(f"{name} must have shape [batch, time] = {tuple(shape_BT)}, got "
                         f"{tuple(jnp.shape(segment_ids))}")
    if not jnp.issubdtype(jnp.result_type(segment_ids), jnp.integer):
        raise ValueError(f"{name} must have an integer dtype, got {jnp.result_type(segment_ids)}")
    values = checks.concrete(segment_ids)
    if values is None:
        return jnp.any(segment_ids[:, 1:] < segment_ids[:, :-1])
    if np.any(np.diff(values, axis=1) < 0):
        raise ValueError(f"{name} must be non-decreasing along time")
    return None


def segment_continues(segment_ids_BT: jax.Array) -> jax.Array:
    """float32 [B, T]: 1 where token t continues the segment of token t-1, else 0.

    Token 0 always continues: `initial_state` belongs to the first segment, and every
    later segment starts from a zero state.
    """
    same_BT = segment_ids_BT[:, 1:] == segment_ids_BT[:, :-1]
    first_B1 = jnp.ones_like(segment_ids_BT[:, :1], dtype=bool)
    return jnp.concatenate([first_B1, same_BT], axis=1).astype(jnp.float32)


def segment_index(segment_ids_BT: jax.Array) -> jax.Array:
    """int32 [B, T]: the ordinal of each token's segment in its row (0 for the first run of equal
    ids, 1 for the next, ...), whatever the id values are."""
    return jnp.cumsum(1 - segment_continues(segment_ids_BT).astype(jnp.int32), axis=1,
                      dtype=jnp.int32)


def segment_positions(segment_ids_BT: jax.Array) -> jax.Array:
    """int32 [B, T]: each token's position within its segment (0 at every segment start)."""
    T = segment_ids_BT.shape[1]
    t_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), segment_ids_BT.shape)
    starts_BT = jnp.where(segment_continues(segment_ids_BT) == 0, t_BT, 0)
    return t_BT - jax.lax.cummax(starts_BT, axis=1)


def same_segment_mask(segment_ids_BT: jax.Array) -> jax.Array:
    """bool [B, 1, T, T]: query t and key s lie in the same segment (attention's mask layout)."""
    return (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])[:, None]
