"""One-token delta-rule update for decoding, fused into one pass over the state.

    S = a S;  S = S + k (beta (v - S^T k))^T;  o = S^T q       (a = exp(g), 0 at a segment start)

A decode step is memory-bound: the [K, V] state is the only large operand. This kernel reads each
state tile once and writes it once, in place (input_output_aliases), where XLA's version of the
same lines reads the state for S^T k, again for the update and again for S^T q unless it fuses
them. One program per (batch*head, value block of BlockSizes.block_v columns); the update is
column-wise in V, so value blocks are independent. Forward only (decoding needs no gradient);
the same BlockSpecs lower on Triton (power-of-two head dims >= 16) and Mosaic TPU (full trailing
dims).
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.block_sizes import TARGETS, BlockSizes
from pallas_kernels.shapes import out_struct


def _step_kernel(q_ref, k_ref, v_ref, beta_ref, a_ref, s_ref, o_ref, s_out_ref):
    q_K1 = q_ref[...].astype(jnp.float32)
    k_K1 = k_ref[...].astype(jnp.float32)
    S_KV = a_ref[...] * s_ref[...]
    predicted_1V = jnp.sum(k_K1 * S_KV, axis=0, keepdims=True)
    delta_1V = beta_ref[...] * (v_ref[...].astype(jnp.float32) - predicted_1V)
    S_KV = S_KV + k_K1 * delta_1V
    s_out_ref[...] = S_KV
    o_ref[...] = jnp.sum(q_K1 * S_KV, axis=0, keepdims=True).astype(o_ref.dtype)


def recurrent_step(q_NK, k_NK, v_NV, beta_N, a_N, S_NKV, *, target: str = "gpu",
                   interpret: bool = False, block_sizes: Optional[BlockSizes] = None):
    """(o_NV in v's dtype, new state_NKV f32) after one token; N = batch*heads, q already scaled.

    Args:
      q_NK, k_NK, v_NV: one token's vectors. beta_N, a_N: f32 per batch*head.
      S_NKV: f32 state, overwritten in place when the caller donates it.
      target: "gpu" (Triton) or "tpu" (Mosaic); interpret runs it on CPU.
      block_sizes: None = the target's default; the GPU uses block_v value columns per program
        and num_warps, the TPU the whole V.
    """
    N, K = q_NK.shape
    V = v_NV.shape[-1]
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    block_sizes = BlockSizes.for_target(target) if block_sizes is None else block_sizes
    if S_NKV.shape != (N, K, V) or S_NKV.dtype != jnp.float32:
        raise ValueError(f"S_NKV must be float32 of shape {(N, K, V)}, got "
                         f"{S_NKV.dtype}{tuple(S_NKV.shape)}")
    BV = V if target == "tpu" or block_sizes.block_v is None else min(V, block_sizes.block_v)
    if V % BV:
        raise ValueError(f"v's head dim {V} must be a multiple of block_sizes.block_v={BV}")
    col = lambda d: pl.BlockSpec((None, d, 1), lambda n, j: (n, 0, 0))
    scalar = pl.BlockSpec((None, 1, 1), lambda n, j: (n, 0, 0))
    row_v = pl.BlockSpec((None, 1, BV), lambda n, j: (n, 0, j))
    state = pl.BlockSpec((None, K, BV), lambda n, j: (n, 0, j))
    inputs = (q_NK[:, :, None], k_NK[:, :, None], v_NV[:, None, :],
              beta_N.astype(jnp.float32)[:, None, None], a_N.astype(jnp.float32)[:, None, None],
              S_NKV)
    if target == "gpu":
        params = dict(compiler_params=pltriton.CompilerParams(
            num_warps=block_sizes.num_warps, num_stages=block_sizes.num_stages),
            interpret=interpret)
    else:
        params = dict(compiler_params=pltpu.CompilerParams(
            dimension_semantics=None if interpret else ("parallel", "parallel")),
            interpret=pltpu.InterpretParams(out_of_bounds_reads="raise",
                                            uninitialized_memory="nan") if interpret else False)
    o, S = pl.pallas_call(
        _step_kernel,
        grid=(N, V // BV),
        in_specs=[col(K), col(K), row_v, scalar, scalar, state],
        out_specs=[row_v, state],
        out_shape=[out_struct((N, 1, V), v_NV.dtype, inputs),
                   out_struct((N, K, V), jnp.float32, inputs)],
        input_output_aliases={5: 1},
        name="delta_rule_step",
        **params,
    )(*inputs)
    return o[:, 0, :], S


@functools.partial(jax.jit, static_argnames=("target", "interpret", "block_sizes"),
                   donate_argnums=(5,))
def recurrent_step_donated(q_NK, k_NK, v_NV, beta_N, a_N, S_NKV, *, target="gpu",
                           interpret=False, block_sizes=None):
    """recurrent_step with the state buffer donated, so the update really happens in place."""
    return recurrent_step(q_NK, k_NK, v_NV, beta_N, a_N, S_NKV, target=target,
                          interpret=interpret, block_sizes=block_sizes)
