"""The body shared by the delta-rule mixers (DeltaNet, Gated DeltaNet, DeltaProduct):
projections, short convolutions, L2-normalised q and k, beta, the optional decay, the delta rule,
the per-head output norm and the output projection, with a cache for decoding."""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deltajax.layers.conv import ShortConvolution, conv_qkv, conv_qkv_cache
from deltajax.layers.mixer import head_dims, value_heads
from deltajax.layers.norm import l2_normalize
from deltajax.ops import delta_rule


def _init_A_log(key, shape, dtype=jnp.float32):
    # Mamba-2 / Gated DeltaNet: decay rates A ~ U[1, 16].
    return jnp.log(jax.random.uniform(key, shape, dtype, 1.0, 16.0))


def _init_dt_bias(key, shape, dtype=jnp.float32):
    # softplus(dt_bias) = dt, log-uniform in [1e-3, 0.1] at initialisation.
    dt = jnp.exp(jax.random.uniform(key, shape, dtype, np.log(1e-3), np.log(0.1)))
    dt = jnp.maximum(dt, 1e-4)
    return dt + jnp.log(-jnp.expm1(-dt))


class DeltaRuleMixer(nn.Module):
    """Token mixer whose state is a [K, V] matrix per head, updated by the delta rule.

    With num_householder = n > 1 (DeltaProduct) every token makes n delta-rule steps with its
    own keys, values and betas; the query reads the state after the last one.
    """

    d_model: int
    num_heads: int
    head_dim: Optional[int] = None        # default d_model // num_heads
    expand_v: float = 1                   # value head dim = expand_v * head_dim
    # Grouped value heads (FLA's num_v_heads): a multiple of num_heads; None = num_heads. Each
    # value head has its own state, beta and decay; groups of them share a query/key head.
    num_v_heads: Optional[int] = None
    num_householder: int = 1
    use_forget_gate: bool = False         # decay g = -exp(A_log) softplus(a(x) + dt_bias) (Mamba)
    use_output_gate: bool = False         # RMSNorm(o) * silu(g_proj(x))
    use_short_conv: bool = True
    conv_size: int = 4
    allow_neg_eigval: bool = False        # beta in [0, 2] instead of [0, 1]
    backend: str = "auto"                 # deltajax.ops.delta_rule's backend
    chunk_size: int = 64
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32              # compute dtype; parameters stay float32

    @property
    def key_value_dims(self) -> tuple[int, int]:
        return head_dims(self.d_model, self.num_heads, self.head_dim, self.expand_v)

    @property
    def value_heads(self) -> int:
        return value_heads(self.num_heads, self.num_v_heads)

    def setup(self):
        if self.num_householder < 1:
            raise ValueError(f"num_householder must be >= 1, got {self.num_householder}")
        (K, V), H, HV = self.key_value_dims, self.num_heads, self.value_heads
        n = self.num_householder
        dense = lambda features: nn.Dense(features, use_bias=False, dtype=self.dtype)
        self.q_proj, self.k_proj, self.v_proj = dense(H * K), dense(n * H * K), dense(n * HV * V)
        self.b_proj = dense(n * HV)
        if self.use_short_conv:
            conv = lambda: ShortConvolution(self.conv_size, dtype=self.dtype)
            self.q_conv, self.k_conv, self.v_conv = conv(), conv(), conv()
        if self.use_forget_gate:
            self.a_proj = dense(HV)
            self.A_log = self.param("A_log", _init_A_log, (HV,))
            self.dt_bias = self.param("dt_bias", _init_dt_bias, (HV,))
        if self.use_output_gate:
            self.g_proj = dense(HV * V)
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
        n = self.num_householder
        conv_size = self.conv_size if self.use_short_conv else None
        return {"state": jnp.zeros((batch, HV, K, V), jnp.float32),
                **conv_qkv_cache(batch, conv_size, (H * K, n * H * K, n * HV * V), self.dtype)}

    def _mix(self, x_BTD, cache, segment_ids_BT=None):
        B, T, _ = x_BTD.shape
        (K, V), H, HV = self.key_value_dims, self.num_heads, self.value_heads
        n = self.num_householder
        convs = (self.q_conv, self.k_conv, self.v_conv) if self.use_short_conv else None
        (q, k, v), new_cache = conv_qkv(
            convs, (self.q_proj(x_BTD), self.k_proj(x_BTD), self.v_proj(x_BTD)), cache,
            segment_ids_BT)
        # Query/key head h serves value heads h * G .. h * G + G - 1 (FLA's grouping), G = HV / H;
        # from here on every head axis has HV entries (the N in the names).
        q_BTNK = jnp.repeat(l2_normalize(q.reshape(B, T, H, K)), HV // H, axis=2)
        k_BTnNK = jnp.repeat(l2_normalize(k.reshape(B, T, n, H, K)), HV // H, axis=3)
        v_BTnNV = v.reshape(B, T, n, HV, V)
        initial_state = None if cache is None else cache["state"]
        o_BTNV, new_cache["state"] = self._recurrence(x_BTD, q_BTNK, k_BTnNK, v_BTnNV,
                                                      initial_state, segment_ids_BT)

        o_BTNV = self.o_norm(o_BTNV)
        if self.use_output_gate:
            o_BTNV = o_BTNV * jax.nn.silu(self.g_proj(x_BTD).reshape(B, T, HV, V))
        y_BTD = self.o_proj(o_BTNV.reshape(B, T, HV * V))
        return y_BTD, (None if cache is None else new_cache)

    def _recurrence(self, x_BTD, q_BTHK, k_BTnHK, v_BTnHV, initial_state, segment_ids_BT):
        B, T, n, H, K = k_BTnHK.shape
        beta_BTnH = jax.nn.sigmoid(self.b_proj(x_BTD).astype(jnp.float32)).reshape(B, T, n, H)
        if self.allow_neg_eigval:
            beta_BTnH = 2.0 * beta_BTnH
        gate_BTH = None
        if self.use_forget_gate:
            a_BTH = self.a_proj(x_BTD).astype(jnp.float32)
            gate_BTH = (-jnp.exp(self.A_log)[None, None]
                        * jax.nn.softplus(a_BTH + self.dt_bias[None, None]))

        # n Householder steps per token are n consecutive delta-rule tokens: the query sits on
        # the last of them and the decay on the first.
        q_BTnHK = jnp.zeros((B, T, n, H, K), q_BTHK.dtype).at[:, :, -1].set(q_BTHK)
        if gate_BTH is not None:
            gate_BTH = jnp.zeros((B, T, n, H), jnp.float32).at[:, :, 0].set(gate_BTH)
            gate_BTH = gate_BTH.reshape(B, T * n, H)
        merge = lambda x: x.reshape(B, T * n, *x.shape[3:])
        if segment_ids_BT is not None:
            segment_ids_BT = jnp.repeat(segment_ids_BT, n, axis=1)
        o, final_state = delta_rule(
            merge(q_BTnHK), merge(k_BTnHK), merge(v_BTnHV), merge(beta_BTnH), gate=gate_BTH,
            initial_state=initial_state, segment_ids=segment_ids_BT,
            return_final_state=initial_state is not None,
            backend=self.backend, chunk_size=self.chunk_size)
        return o.reshape(B, T, n, H, -1)[:, :, -1], final_state
