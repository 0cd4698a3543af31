"""Depthwise causal short convolution with SiLU, with a cache of its last inputs for decoding,
and the q/k/v front end that DeltaNet and its relatives share."""

from collections.abc import Sequence
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


class ShortConvolution(nn.Module):
    """y_t = silu(sum_i w_i * x_{t - K + 1 + i}) per channel, K = kernel_size (no bias)."""

    kernel_size: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BTD: jax.Array, tail_BKD: Optional[jax.Array] = None,
                 segment_ids_BT: Optional[jax.Array] = None):
        """Returns (y_BTD, the last kernel_size - 1 inputs, the tail the next call continues).

        segment_ids_BT (packed sequences): a tap reads only inputs of the token's own segment.
        """
        B, T, D = x_BTD.shape
        K = self.kernel_size
        # fan_in = K, as a depthwise torch Conv1d initialises it.
        init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
        kernel_KD = self.param("kernel", init, (K, D)).astype(self.dtype)
        if tail_BKD is None:
            tail_BKD = jnp.zeros((B, K - 1, D), x_BTD.dtype)
        padded_BSD = jnp.concatenate([tail_BKD.astype(x_BTD.dtype), x_BTD], axis=1)
        taps = [padded_BSD[:, i:i + T] * kernel_KD[i][None, None] for i in range(K)]
        if segment_ids_BT is not None:
            # The tail continues the first token's segment.
            ids_BS = jnp.concatenate([jnp.repeat(segment_ids_BT[:, :1], K - 1, axis=1),
                                      segment_ids_BT], axis=1)
            taps = [tap * (ids_BS[:, i:i + T] == segment_ids_BT)[..., None].astype(tap.dtype)
                    for i, tap in enumerate(taps)]
        return jax.nn.silu(sum(taps)), padded_BSD[:, T:]


_QKV_TAILS = ("conv_q", "conv_k", "conv_v")


def conv_qkv(convs: Optional[Sequence[ShortConvolution]], qkv: Sequence[jax.Array],
             cache: Optional[dict], segment_ids_BT: Optional[jax.Array] = None
             ) -> tuple[tuple[jax.Array, ...], dict]:
    """q, k, v [B, T, width] through their short convolutions, or SiLU alone when convs is None
    (FLA's layers without convolutions). With a cache the convolutions continue from its tails;
    returns the activations and the new tails (conv_q, conv_k, conv_v; none without convs).
    segment_ids_BT: packed sequences, whose taps stay within their segment."""
    if convs is None:
        return tuple(jax.nn.silu(x) for x in qkv), {}
    outputs, tails = [], {}
    for name, conv, x_BTD in zip(_QKV_TAILS, convs, qkv, strict=True):
        y_BTD, tails[name] = conv(x_BTD, None if cache is None else cache[name], segment_ids_BT)
        outputs.append(y_BTD)
    return tuple(outputs), tails


def conv_qkv_cache(batch: int, kernel_size: Optional[int], widths: Sequence[int], dtype) -> dict:
    """The tails of conv_qkv before any token (empty when kernel_size is None: no convolutions)."""
    if kernel_size is None:
        return {}
    return {name: jnp.zeros((batch, kernel_size - 1, width), dtype)
            for name, width in zip(_QKV_TAILS, widths, strict=True)}
