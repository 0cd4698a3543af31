"""SwiGLU feed-forward block."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), bias-free."""

    hidden_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        dense = lambda features, name: nn.Dense(features, use_bias=False, dtype=self.dtype, name=name)
        hidden_BTF = (jax.nn.silu(dense(self.hidden_dim, "gate_proj")(x_BTD))
                      * dense(self.hidden_dim, "up_proj")(x_BTD))
        return dense(x_BTD.shape[-1], "down_proj")(hidden_BTF)
