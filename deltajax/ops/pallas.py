"""backend="pallas": the op's [B, T, H, D] arrays to and from the kernels' layout.

The kernels (pallas_kernels/) take [N = batch*heads, time, dim] with time a multiple of the chunk
and padded head dims, plus the per-token gate and segment information already reduced to the
within-chunk cumulative log-gate G and the within-chunk count of segment starts c. Everything
here is XLA and differentiable, so JAX carries the gradients through the padding, the scale and
the cumulative sum; the kernels' custom VJP does the rest.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from deltajax.ops.segments import segment_continues
from pallas_kernels.block_sizes import BlockSizes
from pallas_kernels.delta_rule_gpu import delta_rule_gpu
from pallas_kernels.delta_rule_tpu import delta_rule_tpu


def _padded_dim(d: int, target: str) -> int:
    if target == "tpu":
        return -(-d // 128) * 128        # whole lanes
    return max(16, 1 << (d - 1).bit_length())  # Triton tiles: powers of two, dots >= 16


def delta_rule_pallas(
    q_BTHK: jax.Array,
    k_BTHK: jax.Array,
    v_BTHV: jax.Array,
    beta_BTH: jax.Array,
    *,
    scale: float,
    chunk_size: int,
    target: str,
    interpret: bool,
    block_sizes: Optional[BlockSizes] = None,
    gate_BTH: Optional[jax.Array] = None,
    initial_state_BHKV: Optional[jax.Array] = None,
    segment_ids_BT: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array]:
    """Returns (o_BTHV in the input dtype, final state_BHKV in float32).

    target: "gpu" (Triton) or "tpu" (Mosaic) kernels; interpret: run them in Pallas interpret
    mode (CPU). deltajax.ops.backend resolves both, and clamps chunk_size (a power of two >=
    block_sizes.min_chunk; the kernels check it). block_sizes: the kernels' tile choices, None =
    BlockSizes.for_target(target).
    """
    if block_sizes is None:
        block_sizes = BlockSizes.for_target(target)
    B, T, H, K = q_BTHK.shape
    V = v_BTHV.shape[-1]
    N, C = B * H, chunk_size
    Tp = -(-T // C) * C   # whole chunks
    Kp, Vp = _padded_dim(K, target), _padded_dim(V, target)
    dtype = q_BTHK.dtype

    def tiles(x_BTHD, Dp):
        # Zero padding: padded tokens have k = v = beta = 0 and write nothing.
        x = jnp.pad(x_BTHD, [(0, 0), (0, Tp - T), (0, 0), (0, Dp - x_BTHD.shape[-1])])
        return jnp.swapaxes(x, 1, 2).reshape(N, Tp, Dp)

    def per_token(x_BTH):
        x = jnp.pad(x_BTH.astype(jnp.float32), [(0, 0), (0, Tp - T), (0, 0)])
        return jnp.swapaxes(x, 1, 2).reshape(N, Tp)

    within_chunk_cumsum = lambda x_XT: jnp.cumsum(
        x_XT.reshape(x_XT.shape[0], Tp // C, C), axis=-1).reshape(x_XT.shape[0], Tp)
    q_NTK = tiles((q_BTHK.astype(jnp.float32) * scale).astype(dtype), Kp)
    k_NTK = tiles(k_BTHK, Kp)
    v_NTV = tiles(v_BTHV.astype(dtype), Vp)
    beta_NT = per_token(beta_BTH)
    if gate_BTH is None:
        G_NT = jnp.zeros((N, Tp), jnp.float32)
    else:
        G_NT = within_chunk_cumsum(per_token(gate_BTH))
    if segment_ids_BT is None:
        c_NT = jnp.zeros((N, Tp), jnp.float32)
    else:
        starts_BT = jnp.pad(1.0 - segment_continues(segment_ids_BT), [(0, 0), (0, Tp - T)])
        c_BT = within_chunk_cumsum(starts_BT)
        c_NT = jnp.broadcast_to(c_BT[:, None, :], (B, H, Tp)).reshape(N, Tp)
    if initial_state_BHKV is None:
        S0_NKV = jnp.zeros((N, Kp, Vp), jnp.float32)
    else:
        S0_NKV = jnp.pad(initial_state_BHKV.astype(jnp.float32),
                         [(0, 0), (0, 0), (0, Kp - K), (0, Vp - V)]).reshape(N, Kp, Vp)

    kernels = delta_rule_tpu if target == "tpu" else delta_rule_gpu
    o_NTV, final_NKV = kernels(q_NTK, k_NTK, v_NTV, beta_NT, G_NT, c_NT, S0_NKV, chunk_size=C,
                               block_sizes=block_sizes, interpret=interpret)
    o_BTHV = jnp.swapaxes(o_NTV.reshape(B, H, Tp, Vp), 1, 2)[:, :T, :, :V]
    final_BHKV = final_NKV.reshape(B, H, Kp, Vp)[:, :, :K, :V]
    return o_BTHV.astype(v_BTHV.dtype), final_BHKV
