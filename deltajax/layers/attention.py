"""Causal softmax attention with RoPE, global or sliding-window, optionally after short
convolutions on q, k and v, with a KV cache for decoding."""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from deltajax.layers.conv import ShortConvolution, conv_qkv, conv_qkv_cache
from deltajax.layers.mixer import head_dims
from deltajax.ops import cached_attention, causal_attention, rope
from deltajax.ops.attention import check_cache_positions


class Attention(nn.Module):
    """Multi-head causal attention (jax.nn.dot_product_attention); `window_size` makes it
    sliding-window: each token attends to itself and the window_size - 1 tokens before it.
    `conv_size` puts the DeltaNet family's short convolutions (with SiLU) on q, k and v."""

    d_model: int
    num_heads: int
    head_dim: Optional[int] = None
    window_size: Optional[int] = None
    rope_theta: float = 10000.0
    conv_size: Optional[int] = None
    dtype: Any = jnp.float32

    @property
    def key_dim(self) -> int:
        return head_dims(self.d_model, self.num_heads, self.head_dim)[0]

    def setup(self):
        if self.window_size is not None and self.window_size < 1:
            raise ValueError(f"window_size must be >= 1 or None, got {self.window_size}")
        dense = lambda features: nn.Dense(features, use_bias=False, dtype=self.dtype)
        width = self.num_heads * self.key_dim
        self.q_proj, self.k_proj, self.v_proj = dense(width), dense(width), dense(width)
        self.o_proj = dense(self.d_model)
        if self.conv_size is not None:
            conv = lambda: ShortConvolution(self.conv_size, dtype=self.dtype)
            self.q_conv, self.k_conv, self.v_conv = conv(), conv(), conv()

    def _project(self, x_BTD, positions_T, cache=None):
        """(q, k, v) [B, T, H, D] and the convolutions' new tails (none without them)."""
        B, T, _ = x_BTD.shape
        qkv, tails = (self.q_proj(x_BTD), self.k_proj(x_BTD), self.v_proj(x_BTD)), {}
        if self.conv_size is not None:
            qkv, tails = conv_qkv((self.q_conv, self.k_conv, self.v_conv), qkv, cache)
        q, k, v = (y.reshape(B, T, self.num_heads, self.key_dim) for y in qkv)
        return rope(q, positions_T, self.rope_theta), rope(k, positions_T, self.rope_theta), v, \
            tails

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        B, T, _ = x_BTD.shape
        q, k, v, _ = self._project(x_BTD, jnp.arange(T))
        o_BTHD = causal_attention(q, k, v, window=self.window_size)
        return self.o_proj(o_BTHD.reshape(B, T, -1))

    def extend(self, x_BTD: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
        """Appends x's tokens to the KV cache and attends over it. Past the cache's max_len
        (pos + T > max_len) cached_attention raises (concrete pos) or gives NaN (traced): the
        clamped write would otherwise give wrong logits."""
        B, T, _ = x_BTD.shape
        if T > cache["k"].shape[1]:  # dynamic_update_slice would fail with a TypeError
            raise ValueError(f"x_BTD's {T} tokens do not fit a KV cache of {cache['k'].shape[1]} "
                             f"positions (give init_cache a larger max_len)")
        start = cache["pos"]
        check_cache_positions(start, T, cache["k"].shape[1])  # raises before any compute
        q, k, v, tails = self._project(x_BTD, start + jnp.arange(T), cache)
        write = lambda buffer, x: jax.lax.dynamic_update_slice(buffer, x.astype(buffer.dtype),
                                                               (0, start, 0, 0))
        k_cache, v_cache = write(cache["k"], k), write(cache["v"], v)
        o_BTHD = cached_attention(q, k_cache, v_cache, start=start, window=self.window_size)
        return self.o_proj(o_BTHD.reshape(B, T, -1)), {"k": k_cache, "v": v_cache,
                                                       "pos": start + T, **tails}

    def init_cache(self, batch: int, max_len: int) -> dict:
        shape = (batch, max_len, self.num_heads, self.key_dim)
        width = self.num_heads * self.key_dim
        return {"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype),
                "pos": jnp.zeros((), jnp.int32),
                **conv_qkv_cache(batch, self.conv_size, (width,) * 3, self.dtype)}
