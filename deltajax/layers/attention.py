"""Causal softmax attention with RoPE (or without: use_rope=False), global or sliding-window,
optionally after short convolutions on q, k and v, with a KV cache for decoding (a ring buffer
of the window's size for sliding-window attention)."""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from deltajax.layers.conv import ShortConvolution, conv_qkv, conv_qkv_cache
from deltajax.layers.mixer import head_dims
from deltajax.ops import cached_attention, causal_attention, rope
from deltajax.ops.attention import check_cache_positions, ring_attention, ring_write
from deltajax.ops.segments import segment_positions


class Attention(nn.Module):
    """Multi-head causal attention (jax.nn.dot_product_attention); `window_size` makes it
    sliding-window: each token attends to itself and the window_size - 1 tokens before it.
    `conv_size` puts the DeltaNet family's short convolutions (with SiLU) on q, k and v."""

    d_model: int
    num_heads: int
    head_dim: Optional[int] = None
    window_size: Optional[int] = None
    rope_theta: float = 10000.0
    use_rope: bool = True  # False: no rotation (positions come from elsewhere, or none: NoPE)
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

    def _project(self, x_BTD, positions, cache=None, segment_ids_BT=None):
        """(q, k, v) [B, T, H, D] and the convolutions' new tails (none without them).
        positions: [T] or [B, T], as rope takes them."""
        B, T, _ = x_BTD.shape
        qkv, tails = (self.q_proj(x_BTD), self.k_proj(x_BTD), self.v_proj(x_BTD)), {}
        if self.conv_size is not None:
            qkv, tails = conv_qkv((self.q_conv, self.k_conv, self.v_conv), qkv, cache,
                                  segment_ids_BT)
        q, k, v = (y.reshape(B, T, self.num_heads, self.key_dim) for y in qkv)
        if not self.use_rope:
            return q, k, v, tails
        return rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta), v, tails

    def __call__(self, x_BTD: jax.Array, segment_ids_BT: Optional[jax.Array] = None
                 ) -> jax.Array:
        """segment_ids_BT: packed sequences; each token attends within its segment, at RoPE
        positions counted from the segment's start."""
        B, T, _ = x_BTD.shape
        positions = jnp.arange(T) if segment_ids_BT is None else segment_positions(segment_ids_BT)
        q, k, v, _ = self._project(x_BTD, positions, segment_ids_BT=segment_ids_BT)
        o_BTHD = causal_attention(q, k, v, window=self.window_size, segment_ids=segment_ids_BT)
        return self.o_proj(o_BTHD.reshape(B, T, -1))

    def _ring(self, cache: dict) -> bool:
        """Whether `cache` is a sliding window's ring buffer (init_cache with max_len >= window)."""
        return self.window_size is not None and cache["k"].shape[1] == self.window_size

    def extend(self, x_BTD: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
        """Appends x's tokens to the KV cache and attends over it. A sliding window's cache is a
        ring buffer of window_size slots and takes any number of tokens. A global cache (or a
        window's with max_len < window_size) holds max_len positions: past them (pos + T >
        max_len) cached_attention raises (concrete pos) or gives NaN (traced), where the clamped
        write would otherwise give wrong logits."""
        B, T, _ = x_BTD.shape
        start, S = cache["pos"], cache["k"].shape[1]
        ring = self._ring(cache)
        if not ring and T > S:  # dynamic_update_slice would fail with a TypeError
            raise ValueError(f"x_BTD's {T} tokens do not fit a KV cache of {S} positions "
                             f"(give init_cache a larger max_len)")
        check_cache_positions(start, T, None if ring else S)  # raises before any compute
        q, k, v, tails = self._project(x_BTD, start + jnp.arange(T), cache)
        if ring:
            o_BTHD = ring_attention(q, k, v, cache["k"], cache["v"], start=start,
                                    window=self.window_size)
            k_cache, v_cache = ring_write(cache["k"], k, start), ring_write(cache["v"], v, start)
        else:
            write = lambda buffer, x: jax.lax.dynamic_update_slice(
                buffer, x.astype(buffer.dtype), (0, start, 0, 0))
            k_cache, v_cache = write(cache["k"], k), write(cache["v"], v)
            o_BTHD = cached_attention(q, k_cache, v_cache, start=start, window=self.window_size)
        return self.o_proj(o_BTHD.reshape(B, T, -1)), {"k": k_cache, "v": v_cache,
                                                       "pos": start + T, **tails}

    def init_cache(self, batch: int, max_len: int) -> dict:
        """Keys and values of max_len positions, or of window_size slots (a ring buffer) for a
        sliding window shorter than max_len: its memory does not grow with the sequence."""
        slots = max_len if self.window_size is None else min(max_len, self.window_size)
        shape = (batch, slots, self.num_heads, self.key_dim)
        width = self.num_heads * self.key_dim
        return {"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype),
                "pos": jnp.zeros((), jnp.int32),
                **conv_qkv_cache(batch, self.conv_size, (width,) * 3, self.dtype)}
