"""Feed-forward blocks: SwiGLU (the LMs) and a ReLU MLP with biases (the grokking models)."""

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
        dense = lambda features, name: nn.Dense(features, use_bias=False, dtype=self.dtype,
                                                name=name)
        hidden_BTF = (jax.nn.silu(dense(self.hidden_dim, "gate_proj")(x_BTD))
                      * dense(self.hidden_dim, "up_proj")(x_BTD))
        return dense(x_BTD.shape[-1], "down_proj")(hidden_BTF)


class ReluMLP(nn.Module):
    """down(relu(up(x) + b_up)) + b_down: the MLP of Nanda et al.'s grokking transformer."""

    hidden_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        hidden_BTF = jax.nn.relu(nn.Dense(self.hidden_dim, dtype=self.dtype, name="up_proj")(x_BTD))
        return nn.Dense(x_BTD.shape[-1], dtype=self.dtype, name="down_proj")(hidden_BTF)
