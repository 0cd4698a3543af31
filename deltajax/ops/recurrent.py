"""Token-by-token delta rule as a `lax.scan`: the executable specification.

Every other backend is tested against the semantics written here (and against an
independent float64 reference in the tests).
"""

from typing import Optional

import jax
import jax.numpy as jnp

from deltajax.ops.segments import segment_continues

# The XLA paths are the reference-grade ones: full f32 matmuls even where the
# platform default would be TF32/bf16 passes.
_PRECISION = jax.lax.Precision.HIGHEST


def delta_rule_recurrent(
    q_BTHK: jax.Array,
    k_BTHK: jax.Array,
    v_BTHV: jax.Array,
    beta_BTH: jax.Array,
    *,
    scale: float,
    gate_BTH: Optional[jax.Array] = None,
    initial_state_BHKV: Optional[jax.Array] = None,
    segment_ids_BT: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array]:
    """Returns (o_BTHV in the input dtype, final state_BHKV in float32)."""
    B, T, H, K = q_BTHK.shape
    V = v_BTHV.shape[-1]
    f32 = lambda x: x.astype(jnp.float32)

    # Per-token multiplier of the incoming state: exp(g_t), zeroed where a new segment starts.
    decay_BTH = jnp.ones((B, T, H), jnp.float32)
    if gate_BTH is not None:
        decay_BTH = jnp.exp(f32(gate_BTH))
    if segment_ids_BT is not None:
        decay_BTH = decay_BTH * segment_continues(segment_ids_BT)[:, :, None]

    if initial_state_BHKV is None:
        state_BHKV = jnp.zeros((B, H, K, V), jnp.float32)
    else:
        state_BHKV = f32(initial_state_BHKV)

    def step(S_BHKV, xs):
        q_BHK, k_BHK, v_BHV, beta_BH, decay_BH = xs
        S_BHKV = decay_BH[..., None, None] * S_BHKV
        predicted_BHV = jnp.einsum("bhk,bhkv->bhv", k_BHK, S_BHKV, precision=_PRECISION)
        delta_BHV = beta_BH[..., None] * (v_BHV - predicted_BHV)
        S_BHKV = S_BHKV + k_BHK[..., :, None] * delta_BHV[..., None, :]
        o_BHV = jnp.einsum("bhk,bhkv->bhv", q_BHK, S_BHKV, precision=_PRECISION)
        return S_BHKV, o_BHV

    time_major = lambda x: jnp.moveaxis(f32(x), 1, 0)
    xs = (time_major(q_BTHK) * scale, time_major(k_BTHK), time_major(v_BTHV),
          time_major(beta_BTH), time_major(decay_BTH))
    final_BHKV, o_TBHV = jax.lax.scan(step, state_BHKV, xs)
    return jnp.moveaxis(o_TBHV, 0, 1).astype(v_BTHV.dtype), final_BHKV
