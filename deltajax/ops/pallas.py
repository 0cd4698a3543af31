"""backend="pallas": the op's [B, T, H, D] arrays to and from the kernels' layout.

The kernels (pallas_kernels/) take [batch*heads, time, dim] with time a multiple of the chunk
and padded head dims, plus the per-token gate and segment information already reduced to the
within-chunk cumulative log-gate G and the within-chunk count of segment starts c. Everything
here is XLA and differentiable, so JAX carries the gradients through the padding, the scale and
the cumulative sum; the kernels' custom VJP does the rest.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from deltajax.ops.segments import segment_continues
from pallas_kernels import delta_rule_gpu, delta_rule_tpu

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
    gate_BTH: Optional[jax.Array] = None,
    initial_state_BHKV: Optional[jax.Array] = None,
    segment_ids_BT: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array]:
    """Returns (o_BTHV in the input dtype, final state_BHKV in float32).

    target: "gpu" (Triton) or "tpu" (Mosaic) kernels; interpret: run them in Pallas interpret
    mode (CPU). deltajax.ops.backend resolves both.
    """
    B, T, H, K = q_BTHK.shape
    V = v_BTHV.shape[-1]
    # As in chunked.py a short sequence gets a smaller chunk, but never below a 16x16 dot tile.
    C = max(delta_rule_gpu.MIN_CHUNK, min(chunk_size, 1 << (T - 1).bit_length()))
    N = -(-T // C)
    Kp, Vp = _padded_dim(K, target), _padded_dim(V, target)
    dtype = q_BTHK.dtype

    def tiles(x_BTHD, Dp):
        # Zero padding: padded tokens have k = v = beta = 0 and write nothing.
        x = jnp.pad(x_BTHD, [(0, 0), (0, N * C - T), (0, 0), (0, Dp - x_BTHD.shape[-1])])
        return jnp.swapaxes(x, 1, 2).reshape(B * H, N * C, Dp)

    def per_token(x_BTH):
        x = jnp.pad(x_BTH.astype(jnp.float32), [(0, 0), (0, N * C - T), (0, 0)])
        return jnp.swapaxes(x, 1, 2).reshape(B * H, N * C)

    q = tiles((q_BTHK.astype(jnp.float32) * scale).astype(dtype), Kp)
    k = tiles(k_BTHK, Kp)
    v = tiles(v_BTHV.astype(dtype), Vp)
    beta = per_token(beta_BTH)
    if gate_BTH is None:
        G = jnp.zeros((B * H, N * C), jnp.float32)
    else:
        G = jnp.cumsum(per_token(gate_BTH).reshape(B * H, N, C), axis=-1).reshape(B * H, N * C)
    if segment_ids_BT is None:
        c = jnp.zeros((B * H, N * C), jnp.float32)
    else:
        starts_BT = 1.0 - segment_continues(segment_ids_BT)
        starts_BNC = jnp.pad(starts_BT, [(0, 0), (0, N * C - T)]).reshape(B, N, C)
        c_BT = jnp.cumsum(starts_BNC, axis=-1).reshape(B, 1, N * C)
        c = jnp.broadcast_to(c_BT, (B, H, N * C)).reshape(B * H, N * C)
    if initial_state_BHKV is None:
        S0 = jnp.zeros((B * H, Kp, Vp), jnp.float32)
    else:
        S0 = jnp.pad(initial_state_BHKV.astype(jnp.float32),
                     [(0, 0), (0, 0), (0, Kp - K), (0, Vp - V)]).reshape(B * H, Kp, Vp)

    kernels = delta_rule_tpu if target == "tpu" else delta_rule_gpu
    o, final = kernels.delta_rule_chunked(q, k, v, beta, G, c, S0, chunk_size=C,
                                          interpret=interpret)
    o_BTHV = jnp.swapaxes(o.reshape(B, H, N * C, Vp), 1, 2)[:, :T, :, :V]
    final_BHKV = final.reshape(B, H, Kp, Vp)[:, :, :K, :V]
    return o_BTHV.astype(v_BTHV.dtype), final_BHKV
