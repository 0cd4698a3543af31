"""Helpers for packed sequences (`segment_ids`)."""

import jax
import jax.numpy as jnp


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
