"""Depthwise causal short convolution with SiLU, with a cache of its last inputs for decoding."""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


class ShortConvolution(nn.Module):
    """y_t = silu(sum_i w_i * x_{t - K + 1 + i}) per channel, K = kernel_size (no bias)."""

    kernel_size: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BTD: jax.Array, tail_BKD: Optional[jax.Array] = None):
        """Returns (y_BTD, the last kernel_size - 1 inputs, the tail the next call continues)."""
        B, T, D = x_BTD.shape
        K = self.kernel_size
        # fan_in = K, as a depthwise torch Conv1d initialises it.
        kernel_KD = self.param("kernel", nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                               (K, D)).astype(self.dtype)
        if tail_BKD is None:
            tail_BKD = jnp.zeros((B, K - 1, D), x_BTD.dtype)
        padded_BSD = jnp.concatenate([tail_BKD.astype(x_BTD.dtype), x_BTD], axis=1)
        y_BTD = sum(padded_BSD[:, i:i + T] * kernel_KD[i][None, None] for i in range(K))
        return jax.nn.silu(y_BTD), padded_BSD[:, T:]
