"""Plain linear attention, the delta rule's ablation: S_t = S_{t-1} + k_t v_t^T, o_t = S_t^T q_t,
with DeltaNet's projections, short convolutions, L2-normalised q and k and output norm, so the
update rule is the only difference. feature_map="elu_plus_one" instead maps q and k through
elu(x) + 1 (Katharopoulos et al. 2020): positive features, so any two keys overlap. It has one
path (deltajax.ops.linear_attention, chunkwise), hence no backend."""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from deltajax.layers.conv import ShortConvolution, conv_qkv, conv_qkv_cache
from deltajax.layers.mixer import head_dims, value_heads
from deltajax.layers.norm import l2_normalize
from deltajax.ops import linear_attention

# The map applied to q and k per head. Katharopoulos' normaliser, phi(q).sum_s phi(k_s), is a
# positive scalar per head and position, which the per-head output RMSNorm divides out (up to
# its eps), so it is not computed.
FEATURE_MAPS = {"l2_norm": l2_normalize, "elu_plus_one": lambda x: jax.nn.elu(x) + 1.0}


class LinearAttention(nn.Module):
    """Bias-free q/k/v projections, short convolutions with SiLU, q and k through the feature
    map (L2 normalisation by default), the additive state update, per-head RMSNorm of the
    output, output projection."""

    d_model: int
    num_heads: int
    head_dim: Optional[int] = None        # default d_model // num_heads
    expand_v: float = 1                   # value head dim = expand_v * head_dim
    num_v_heads: Optional[int] = None     # grouped value heads, as in DeltaRuleMixer
    use_short_conv: bool = True
    conv_size: int = 4
    chunk_size: int = 64
    feature_map: str = "l2_norm"          # or "elu_plus_one"; FEATURE_MAPS
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32              # compute dtype; parameters stay float32

    @property
    def key_value_dims(self) -> tuple[int, int]:
        return head_dims(self.d_model, self.num_heads, self.head_dim, self.expand_v)

    @property
    def value_heads(self) -> int:
        return value_heads(self.num_heads, self.num_v_heads)

    def setup(self):
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(f"LinearAttention.feature_map must be one of {sorted(FEATURE_MAPS)}, "
                             f"got {self.feature_map!r}")
        (K, V), H, HV = self.key_value_dims, self.num_heads, self.value_heads
        dense = lambda features: nn.Dense(features, use_bias=False, dtype=self.dtype)
        self.q_proj, self.k_proj, self.v_proj = dense(H * K), dense(H * K), dense(HV * V)
        if self.use_short_conv:
            conv = lambda: ShortConvolution(self.conv_size, dtype=self.dtype)
            self.q_conv, self.k_conv, self.v_conv = conv(), conv(), conv()
        self.o_norm = nn.RMSNorm(epsilon=self.norm_eps, dtype=self.dtype)
        self.o_proj = dense(self.d_model)

    def __call__(self, x_BTD: jax.Array, segment_ids_BT: Optional[jax.Array] = None
                 ) -> jax.Array:
        """segment_ids_BT: packed sequences; the state and the convolutions reset per segment."""
        return self._mix(x_BTD, cache=None, segment_ids_BT=segment_ids_BT)[0]

    def extend(self, x_BTD: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
        """Continues the sequence held in `cache` by x's tokens (T = 1 is a decode step)."""
        return self._mix(x_BTD, cache)

    def init_cache(self, batch: int, max_len: int) -> dict:
        """The state before any token; max_len is unused (the state has a fixed size)."""
        del max_len
        (K, V), H, HV = self.key_value_dims, self.num_heads, self.value_heads
        conv_size = self.conv_size if self.use_short_conv else None
        return {"state": jnp.zeros((batch, HV, K, V), jnp.float32),
                **conv_qkv_cache(batch, conv_size, (H * K, H * K, HV * V), self.dtype)}

    def _mix(self, x_BTD, cache, segment_ids_BT=None):
        B, T, _ = x_BTD.shape
        (K, V), H, HV = self.key_value_dims, self.num_heads, self.value_heads
        convs = (self.q_conv, self.k_conv, self.v_conv) if self.use_short_conv else None
        (q, k, v), new_cache = conv_qkv(
            convs, (self.q_proj(x_BTD), self.k_proj(x_BTD), self.v_proj(x_BTD)), cache,
            segment_ids_BT)
        phi = FEATURE_MAPS[self.feature_map]
        heads = lambda x: jnp.repeat(phi(x.reshape(B, T, H, K)), HV // H, axis=2)
        o_BTNV, new_cache["state"] = linear_attention(
            heads(q), heads(k), v.reshape(B, T, HV, V),
            initial_state=None if cache is None else cache["state"], segment_ids=segment_ids_BT,
            return_final_state=True, chunk_size=self.chunk_size)
        y_BTD = self.o_proj(self.o_norm(o_BTNV).reshape(B, T, HV * V))
        return y_BTD, (None if cache is None else new_cache)
