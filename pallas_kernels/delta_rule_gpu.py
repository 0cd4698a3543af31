"""Chunked delta rule on GPU: Pallas with the Triton lowering, forward and hand-written backward.

In the order of JAX's Pallas ops: kernels -> pallas_call wrappers -> custom_vjp -> public
`delta_rule_gpu`. The two sequential state passes run one program per (value block, batch*head)
and loop over chunks inside, with the [K, BV] state in registers (Triton programs cannot hand
state to one another). Splitting V into BV = block_sizes.block_v columns is exact: every term of
the chunk update is column-wise in V, so each program redoes only the cheap [C, C] work. The
chunk-parallel kernels (prepare, chunk_grads) are shared with the TPU in chunk_kernels.py.

Layout: N = batch*heads, T = time (a multiple of the chunk C), M = T / C chunks, head dims K, V
powers of two >= 16 (tl.dot needs 16 x 16 tiles); deltajax/ops/pallas.py pads to that.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels import chunk_kernels, chunk_math
from pallas_kernels.block_sizes import BlockSizes
from pallas_kernels.chunk_kernels import TokenScalars
from pallas_kernels.shapes import out_struct


def _load_chunk(n, j, C, q_ref, k_ref, w_ref, tok_refs):
    """Chunk j of row n: q, k [C, K] f32, W [C, K] as stored, and the chunk's decay masks."""
    t = pl.ds(j * C, C)
    f32 = lambda ref: ref[n, t, :].astype(jnp.float32)
    _, G_NT1_ref, G_NM1C_ref, c_NT1_ref, c_NM1C_ref = tok_refs
    decay = chunk_math.decay_masks(G_NT1_ref[n, t, :], G_NM1C_ref[n, j, :, :],
                                   c_NT1_ref[n, t, :], c_NM1C_ref[n, j, :, :])
    return f32(q_ref), f32(k_ref), w_ref[n, t, :], decay


def _forward_kernel(q_ref, k_ref, w_ref, u_ref, *refs, C, BV, dtype, save_states):
    """Whole arrays: q, k, w [N, T, K], u [N, T, V], token scalars, s0 [N, K, V] ->
    o [N, T, V], (states [N, M, K, V] when save_states), final [N, K, V]; this program's
    value columns only."""
    tok_refs, (s0_ref, o_ref, *states_ref, final_ref) = refs[:5], refs[5:]
    iv, n = pl.program_id(0), pl.program_id(1)
    vs = pl.ds(iv * BV, BV)

    def chunk(j, S_KV):
        q, k, W, decay = _load_chunk(n, j, C, q_ref, k_ref, w_ref, tok_refs)
        t = pl.ds(j * C, C)
        if save_states:
            states_ref[0][n, j, :, vs] = S_KV
        U = u_ref[n, t, vs].astype(jnp.float32)
        o, S_KV = chunk_math.chunk_forward(q, k, W, U, S_KV, decay, dtype)
        o_ref[n, t, vs] = o.astype(o_ref.dtype)
        return S_KV

    num_chunks = q_ref.shape[1] // C
    final_ref[n, :, vs] = jax.lax.fori_loop(0, num_chunks, chunk, s0_ref[n, :, vs])


def _backward_kernel(q_ref, k_ref, w_ref, do_ref, *refs, C, BV, dtype):
    """Whole arrays: q, k, w [N, T, K], do [N, T, V], token scalars, dfinal [N, K, V] ->
    dstates [N, M, K, V] (the cotangent of the state leaving each chunk), ds0 [N, K, V]."""
    tok_refs, (dfinal_ref, dstates_ref, ds0_ref) = refs[:5], refs[5:]
    iv, n = pl.program_id(0), pl.program_id(1)
    vs = pl.ds(iv * BV, BV)
    num_chunks = q_ref.shape[1] // C

    def chunk(i, dS_KV):
        j = num_chunks - 1 - i
        q, k, W, decay = _load_chunk(n, j, C, q_ref, k_ref, w_ref, tok_refs)
        dstates_ref[n, j, :, vs] = dS_KV
        do = do_ref[n, pl.ds(j * C, C), vs].astype(jnp.float32)
        return chunk_math.chunk_state_grad(q, k, W, do, dS_KV, decay, dtype)

    ds0_ref[n, :, vs] = jax.lax.fori_loop(0, num_chunks, chunk, dfinal_ref[n, :, vs])


def _call_params(num_warps: int, block_sizes: BlockSizes, interpret: bool) -> dict:
    params = pltriton.CompilerParams(num_warps=num_warps, num_stages=block_sizes.num_stages)
    return dict(interpret=interpret, compiler_params=params)


def _value_block(block_sizes: BlockSizes, V: int) -> int:
    return V if block_sizes.block_v is None else min(V, block_sizes.block_v)


def forward_pass(q_NTK, k_NTK, W_NTK, U_NTV, tok: TokenScalars, S0_NKV, *, chunk_size,
                 block_sizes, interpret, save_states):
    """(o_NTV, states_NMKV or None, final_NKV): the state entering each chunk, when asked."""
    N, T, K = q_NTK.shape
    V = U_NTV.shape[-1]
    BV = _value_block(block_sizes, V)
    kernel = functools.partial(_forward_kernel, C=chunk_size, BV=BV, dtype=q_NTK.dtype,
                               save_states=save_states)
    inputs = (q_NTK, k_NTK, W_NTK, U_NTV, *tok, S0_NKV)
    states = ([out_struct((N, T // chunk_size, K, V), jnp.float32, inputs)] if save_states
              else [])
    o, *states, final = pl.pallas_call(
        kernel, grid=(V // BV, N),
        out_shape=[out_struct((N, T, V), q_NTK.dtype, inputs), *states,
                   out_struct((N, K, V), jnp.float32, inputs)],
        name="delta_rule_forward_gpu",
        **_call_params(block_sizes.num_warps, block_sizes, interpret),
    )(*inputs)
    return o, (states[0] if save_states else None), final


def backward_pass(q_NTK, k_NTK, W_NTK, do_NTV, tok: TokenScalars, dfinal_NKV, *, chunk_size,
                  block_sizes, interpret):
    """(dstates_NMKV, dS0_NKV): the reverse pass over chunks of the state's cotangent."""
    N, T, K = q_NTK.shape
    V = do_NTV.shape[-1]
    BV = _value_block(block_sizes, V)
    kernel = functools.partial(_backward_kernel, C=chunk_size, BV=BV, dtype=q_NTK.dtype)
    inputs = (q_NTK, k_NTK, W_NTK, do_NTV, *tok, dfinal_NKV)
    return pl.pallas_call(
        kernel, grid=(V // BV, N),
        out_shape=[out_struct((N, T // chunk_size, K, V), jnp.float32, inputs),
                   out_struct((N, K, V), jnp.float32, inputs)],
        name="delta_rule_backward_gpu",
        **_call_params(block_sizes.num_warps, block_sizes, interpret),
    )(*inputs)


def _prepare(k, v, tok, chunk_size, block_sizes, interpret):
    return chunk_kernels.prepare(
        k, v, tok, chunk_size=chunk_size, solve_precision=block_sizes.solve_precision,
        call_params=_call_params(block_sizes.num_warps_parallel, block_sizes, interpret))


def _forward(q, k, v, beta, G, c, S0, chunk_size, block_sizes, interpret, save_states):
    """((o, final), residuals); the per-chunk states are written only when save_states."""
    tok = chunk_kernels.token_scalars(beta, G, c, chunk_size)
    W, U = _prepare(k, v, tok, chunk_size, block_sizes, interpret)
    o, states, final = forward_pass(q, k, W, U, tok, S0, chunk_size=chunk_size,
                                    block_sizes=block_sizes, interpret=interpret,
                                    save_states=save_states)
    return (o, final), (q, k, v, beta, G, c, states)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _delta_rule(q, k, v, beta, G, c, S0, chunk_size, block_sizes, interpret):
    """q, k [N, T, K], v [N, T, V], beta, G, c [N, T], S0 [N, K, V] -> (o_NTV, final_NKV)."""
    return _forward(q, k, v, beta, G, c, S0, chunk_size, block_sizes, interpret, False)[0]


def _delta_rule_fwd(q, k, v, beta, G, c, S0, chunk_size, block_sizes, interpret):
    # Only a differentiated call writes the per-chunk states: they are the residuals.
    return _forward(q, k, v, beta, G, c, S0, chunk_size, block_sizes, interpret, True)


def _delta_rule_bwd(chunk_size, block_sizes, interpret, residuals, cotangents):
    q, k, v, beta, G, c, states = residuals
    do, dfinal = cotangents
    tok = chunk_kernels.token_scalars(beta, G, c, chunk_size)
    # Recomputing W is cheaper than keeping it as a residual.
    W, _ = _prepare(k, v, tok, chunk_size, block_sizes, interpret)
    dstates, dS0 = backward_pass(q, k, W, do, tok, dfinal.astype(jnp.float32),
                                 chunk_size=chunk_size, block_sizes=block_sizes,
                                 interpret=interpret)
    grads = chunk_kernels.chunk_grads(
        q, k, v, tok, states, dstates, do, chunk_size=chunk_size,
        call_params=_call_params(block_sizes.num_warps_parallel, block_sizes, interpret),
        solve_precision=block_sizes.solve_precision,
        block_v=_value_block(block_sizes, v.shape[-1]))
    return chunk_kernels.input_cotangents((q, k, v, beta, G, c), grads, dS0)


_delta_rule.defvjp(_delta_rule_fwd, _delta_rule_bwd)


def delta_rule_gpu(q_NTK, k_NTK, v_NTV, beta_NT, G_NT, c_NT, S0_NKV, *, chunk_size: int,
                   block_sizes: Optional[BlockSizes] = None, interpret: bool = False):
    """(o_NTV in q's dtype, final state_NKV f32), differentiable in all but c.

    Args:
      q_NTK, k_NTK, v_NTV: bf16 or f32, T a multiple of chunk_size; q already scaled.
      beta_NT: f32. G_NT: the within-chunk cumulative sum of the log-gate (f32).
      c_NT: f32 number of segment starts (tokens whose segment differs from the previous
        token's) in the chunk up to and including each token: 0 = the entering state's segment.
      S0_NKV: f32 initial state.
      chunk_size: a power of two >= block_sizes.min_chunk.
      block_sizes: tile choices; None = BlockSizes.gpu().
      interpret: run in Pallas interpret mode (CPU).
    """
    block_sizes = BlockSizes.gpu() if block_sizes is None else block_sizes
    chunk_kernels.check_layout(q_NTK, k_NTK, v_NTV, beta_NT, G_NT, c_NT, S0_NKV,
                               chunk_size, block_sizes)
    for name, x in (("q", q_NTK), ("v", v_NTV)):
        if x.shape[-1] < 16 or x.shape[-1] & (x.shape[-1] - 1):
            raise ValueError(f"{name} must have a power-of-two head dim >= 16, got {x.shape}")
    return _delta_rule(q_NTK, k_NTK, v_NTV, beta_NT, G_NT, c_NT, S0_NKV, int(chunk_size),
                       block_sizes, bool(interpret))
