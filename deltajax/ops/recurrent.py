"""Token-by-token delta rule as a `lax.scan`: the executable specification.

Every other backend is tested against the semantics written here (and against an
independent float64 reference in the tests).
"""

from typing import Optional

import jax
import jax.numpy as jnp

from deltajax.ops.segments import segment_continues, segment_index

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
    num_segments: Optional[int] = None,
) -> tuple[jax.Array, jax.Array]:
    """Returns (o_BTHV in the input dtype, final state_BHKV in float32).

    With num_segments (and segment_ids_BT) every segment has its own state: initial_state is then
    [B, num_segments, H, K, V] (segment n of a row: its n-th run of equal ids; None = zeros), and
    the final state returned is [B, num_segments, H, K, V], each segment's state after its last
    token (its initial state if the row has no such segment).
    """
    if num_segments is not None:
        return _per_segment_states(q_BTHK, k_BTHK, v_BTHV, beta_BTH, scale=scale,
                                   gate_BTH=gate_BTH, initial_states_BNHKV=initial_state_BHKV,
                                   segment_ids_BT=segment_ids_BT, num_segments=num_segments)
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
        S_BHKV = _update(decay_BH[..., None, None] * S_BHKV, k_BHK, v_BHV, beta_BH)
        return S_BHKV, _read(S_BHKV, q_BHK)

    xs = (_time_major(q_BTHK) * scale, _time_major(k_BTHK), _time_major(v_BTHV),
          _time_major(beta_BTH), _time_major(decay_BTH))
    final_BHKV, o_TBHV = jax.lax.scan(step, state_BHKV, xs)
    return jnp.moveaxis(o_TBHV, 0, 1).astype(v_BTHV.dtype), final_BHKV


def _time_major(x_BT_):
    return jnp.moveaxis(x_BT_.astype(jnp.float32), 1, 0)


def _update(S_BHKV, k_BHK, v_BHV, beta_BH):
    """One delta-rule write into the (already decayed) state."""
    predicted_BHV = jnp.einsum("bhk,bhkv->bhv", k_BHK, S_BHKV, precision=_PRECISION)
    delta_BHV = beta_BH[..., None] * (v_BHV - predicted_BHV)
    return S_BHKV + k_BHK[..., :, None] * delta_BHV[..., None, :]


def _read(S_BHKV, q_BHK):
    return jnp.einsum("bhk,bhkv->bhv", q_BHK, S_BHKV, precision=_PRECISION)


def _per_segment_states(q_BTHK, k_BTHK, v_BTHV, beta_BTH, *, scale, gate_BTH,
                        initial_states_BNHKV, segment_ids_BT, num_segments):
    """The scan with a state per segment: a segment starts from its own initial state, and each
    token's state is also written to its segment's slot of the final states (the slot keeps the
    last write, the state after the segment's last token)."""
    B, T, H, K = q_BTHK.shape
    V = v_BTHV.shape[-1]
    if initial_states_BNHKV is None:
        initial_states_BNHKV = jnp.zeros((B, num_segments, H, K, V), jnp.float32)
    initial_states_BNHKV = initial_states_BNHKV.astype(jnp.float32)
    decay_BTH = (jnp.ones((B, T, H), jnp.float32) if gate_BTH is None
                 else jnp.exp(gate_BTH.astype(jnp.float32)))
    # Token 0 counts as a start too: it takes segment 0's initial state.
    starts_BT = (1 - segment_continues(segment_ids_BT)).at[:, 0].set(1)
    # An index past the last slot (too many segments) is clamped by the gather and dropped by the
    # scatter; delta_rule checks the count and poisons such calls.
    index_BT = segment_index(segment_ids_BT)
    rows_B = jnp.arange(B)

    def step(carry, xs):
        S_BHKV, finals_BNHKV = carry
        q_BHK, k_BHK, v_BHV, beta_BH, decay_BH, start_B, index_B = xs
        entering_BHKV = initial_states_BNHKV[rows_B, index_B]
        S_BHKV = jnp.where(start_B[:, None, None, None] > 0, entering_BHKV, S_BHKV)
        S_BHKV = _update(decay_BH[..., None, None] * S_BHKV, k_BHK, v_BHV, beta_BH)
        finals_BNHKV = finals_BNHKV.at[rows_B, index_B].set(S_BHKV, mode="drop")
        return (S_BHKV, finals_BNHKV), _read(S_BHKV, q_BHK)

    xs = (_time_major(q_BTHK) * scale, _time_major(k_BTHK), _time_major(v_BTHV),
          _time_major(beta_BTH), _time_major(decay_BTH), jnp.moveaxis(starts_BT, 1, 0),
          jnp.moveaxis(index_BT, 1, 0))
    carry = (jnp.zeros((B, H, K, V), jnp.float32), initial_states_BNHKV)
    (_, finals_BNHKV), o_TBHV = jax.lax.scan(step, carry, xs)
    return jnp.moveaxis(o_TBHV, 0, 1).astype(v_BTHV.dtype), finals_BNHKV
