"""Causal softmax attention with RoPE, global or sliding-window, with a KV cache for decoding."""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from deltajax.layers.mixer import head_dims
from deltajax.ops import cached_attention, causal_attention, rope
from deltajax.ops.attention import check_cache_positions


class Attention(nn.Module):
    """Multi-head causal attention (jax.nn.dot_product_attention); `window_size` makes it
    sliding-window: each token attends to itself and the window_size - 1 tokens before it."""

    d_model: int
    num_heads: int
    head_dim: Optional[int] = None
    window_size: Optional[int] = None
    rope_theta: float = 10000.0
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

    def _project(self, x_BTD, positions_T):
        B, T, _ = x_BTD.shape
        heads = lambda y: y.reshape(B, T, self.num_heads, self.key_dim)
        q = rope(heads(self.q_proj(x_BTD)), positions_T, self.rope_theta)
        k = rope(heads(self.k_proj(x_BTD)), positions_T, self.rope_theta)
        return q, k, heads(self.v_proj(x_BTD))

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        B, T, _ = x_BTD.shape
        q, k, v = self._project(x_BTD, jnp.arange(T))
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
        q, k, v = self._project(x_BTD, start + jnp.arange(T))
        write = lambda buffer, x: jax.lax.dynamic_update_slice(buffer, x.astype(buffer.dtype),
                                                               (0, start, 0, 0))
        k_cache, v_cache = write(cache["k"], k), write(cache["v"], v)
        o_BTHD = cached_attention(q, k_cache, v_cache, start=start, window=self.window_size)
        return self.o_proj(o_BTHD.reshape(B, T, -1)), {"k": k_cache, "v": v_cache, "pos": start + T}

    def init_cache(self, batch: int, max_len: int) -> dict:
        shape = (batch, max_len, self.num_heads, self.key_dim)
        return {"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype),
                "pos": jnp.zeros((), jnp.int32)}
