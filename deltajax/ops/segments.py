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
