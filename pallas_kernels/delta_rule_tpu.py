"""Chunked delta rule on TPU: Pallas Mosaic TPU, forward and hand-written backward.

In the order of JAX's Pallas ops: kernels -> pallas_call wrappers -> custom_vjp -> public
`delta_rule_tpu`. The sequential passes have grid (batch*heads "parallel", chunks "arbitrary"):
Mosaic runs the chunk axis in order on one core, so the [K, V] state lives in a VMEM scratch
buffer from one grid step to the next while BlockSpecs stream each chunk's (C, head_dim) tiles
through VMEM. The backward pass walks the chunks in reverse through its index maps. The
chunk-parallel kernels (prepare, chunk_grads) are shared with the GPU in chunk_kernels.py.

Layout: N = batch*heads, T = time (a multiple of the chunk C, itself a multiple of 8 sublanes),
M = T / C chunks, head dims K, V full (lane-padded) trailing dims. Of BlockSizes the TPU uses
min_chunk and solve_precision: the state is always the whole [K, V] (VMEM, not registers), and
warps and stages are Triton's.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import chunk_kernels, chunk_math
from pallas_kernels.block_sizes import BlockSizes
from pallas_kernels.chunk_kernels import TokenScalars, load_decay
from pallas_kernels.shapes import out_struct


def _forward_kernel(q_ref, k_ref, w_ref, u_ref, beta_ref, G_C1_ref, G_1C_ref, c_C1_ref,
                    c_1C_ref, s0_ref, o_ref, *refs, dtype, save_states):
    """Chunk j of row n: q, k, w [C, K], u [C, V], token scalars, s0 [K, V] -> o [C, V],
    (the state entering the chunk [K, V] when save_states), final [K, V] at the last chunk."""
    *states_ref, final_ref, S_ref = refs
    del beta_ref  # folded into W and U already
    j = pl.program_id(1)

    @pl.when(j == 0)
    def _():
        S_ref[...] = s0_ref[...]

    S_KV = S_ref[...]
    if save_states:
        states_ref[0][...] = S_KV
    decay = load_decay(G_C1_ref, G_1C_ref, c_C1_ref, c_1C_ref)
    o, S_KV = chunk_math.chunk_forward(q_ref[...].astype(jnp.float32),
                                       k_ref[...].astype(jnp.float32), w_ref[...],
                                       u_ref[...].astype(jnp.float32), S_KV, decay, dtype)
    o_ref[...] = o.astype(o_ref.dtype)
    S_ref[...] = S_KV

    @pl.when(j == pl.num_programs(1) - 1)
    def _():
        final_ref[...] = S_KV


def _backward_kernel(q_ref, k_ref, w_ref, do_ref, beta_ref, G_C1_ref, G_1C_ref, c_C1_ref,
                     c_1C_ref, dfinal_ref, dstates_ref, ds0_ref, dS_ref, *, dtype):
    """Grid step i visits chunk M-1-i: q, k, w [C, K], do [C, V], dfinal [K, V] -> dstates
    [K, V] (the cotangent of the state leaving the chunk), ds0 [K, V] at the first chunk."""
    del beta_ref
    i = pl.program_id(1)

    @pl.when(i == 0)
    def _():
        dS_ref[...] = dfinal_ref[...]

    dS_KV = dS_ref[...]
    dstates_ref[...] = dS_KV
    decay = load_decay(G_C1_ref, G_1C_ref, c_C1_ref, c_1C_ref)
    dS_KV = chunk_math.chunk_state_grad(q_ref[...].astype(jnp.float32),
                                        k_ref[...].astype(jnp.float32), w_ref[...],
                                        do_ref[...].astype(jnp.float32), dS_KV, decay, dtype)
    dS_ref[...] = dS_KV

    @pl.when(i == pl.num_programs(1) - 1)
    def _():
        ds0_ref[...] = dS_KV


def _call_params(interpret: bool, semantics: tuple) -> dict:
    if interpret:
        # Out-of-bounds reads raise and unwritten memory reads as NaN, so indexing bugs fail.
        interpret = pltpu.InterpretParams(out_of_bounds_reads="raise", uninitialized_memory="nan")
        # JAX 0.10's TPU interpreter fails on the grid axis that vmap prepends when semantics
        # are given (the Mosaic compiler skips it); without them it runs every axis in order,
        # which is what "arbitrary" means and is valid for "parallel" axes too.
        semantics = None
    return dict(interpret=interpret,
                compiler_params=pltpu.CompilerParams(dimension_semantics=semantics))


def _specs(C, K, V, chunk):
    """BlockSpecs of one chunk's operands; chunk(i) is the chunk visited at grid step i."""
    tile = lambda d: pl.BlockSpec((None, C, d), lambda n, i: (n, chunk(i), 0))
    col = pl.BlockSpec((None, C, 1), lambda n, i: (n, chunk(i), 0))
    row = pl.BlockSpec((None, None, 1, C), lambda n, i: (n, chunk(i), 0, 0))
    per_chunk_state = pl.BlockSpec((None, None, K, V), lambda n, i: (n, chunk(i), 0, 0))
    state = pl.BlockSpec((None, K, V), lambda n, i: (n, 0, 0))
    return tile, [col, col, row, col, row], per_chunk_state, state


def forward_pass(q_NTK, k_NTK, W_NTK, U_NTV, tok: TokenScalars, S0_NKV, *, chunk_size,
                 interpret, save_states):
    """(o_NTV, states_NMKV or None, final_NKV): the state entering each chunk, when asked."""
    N, T, K = q_NTK.shape
    V = U_NTV.shape[-1]
    M = T // chunk_size
    tile, scalars, per_chunk_state, state = _specs(chunk_size, K, V, lambda i: i)
    inputs = (q_NTK, k_NTK, W_NTK, U_NTV, *tok, S0_NKV)
    states = [out_struct((N, M, K, V), jnp.float32, inputs)] if save_states else []
    o, *states, final = pl.pallas_call(
        functools.partial(_forward_kernel, dtype=q_NTK.dtype, save_states=save_states),
        grid=(N, M),
        in_specs=[tile(K), tile(K), tile(K), tile(V)] + scalars + [state],
        out_specs=[tile(V)] + [per_chunk_state] * save_states + [state],
        out_shape=[out_struct((N, T, V), q_NTK.dtype, inputs), *states,
                   out_struct((N, K, V), jnp.float32, inputs)],
        scratch_shapes=[pltpu.VMEM((K, V), jnp.float32)],
        name="delta_rule_forward_tpu",
        **_call_params(interpret, ("parallel", "arbitrary")),
    )(*inputs)
    return o, (states[0] if save_states else None), final


def backward_pass(q_NTK, k_NTK, W_NTK, do_NTV, tok: TokenScalars, dfinal_NKV, *, chunk_size,
                  interpret):
    """(dstates_NMKV, dS0_NKV): the reverse pass over chunks of the state's cotangent."""
    N, T, K = q_NTK.shape
    V = do_NTV.shape[-1]
    M = T // chunk_size
    tile, scalars, per_chunk_state, state = _specs(chunk_size, K, V, lambda i: M - 1 - i)
    inputs = (q_NTK, k_NTK, W_NTK, do_NTV, *tok, dfinal_NKV)
    return pl.pallas_call(
        functools.partial(_backward_kernel, dtype=q_NTK.dtype),
        grid=(N, M),
        in_specs=[tile(K), tile(K), tile(K), tile(V)] + scalars + [state],
        out_specs=[per_chunk_state, state],
        out_shape=[out_struct((N, M, K, V), jnp.float32, inputs),
                   out_struct((N, K, V), jnp.float32, inputs)],
        scratch_shapes=[pltpu.VMEM((K, V), jnp.float32)],
        name="delta_rule_backward_tpu",
        **_call_params(interpret, ("parallel", "arbitrary")),
    )(*inputs)


def _prepare(k, v, tok, chunk_size, block_sizes, interpret):
    return chunk_kernels.prepare(
        k, v, tok, chunk_size=chunk_size, solve_precision=block_sizes.solve_precision,
        call_params=_call_params(interpret, ("parallel", "parallel")))


def _forward(q, k, v, beta, G, c, S0, chunk_size, block_sizes, interpret, save_states):
    """((o, final), residuals); the per-chunk states are written only when save_states."""
    tok = chunk_kernels.token_scalars(beta, G, c, chunk_size)
    W, U = _prepare(k, v, tok, chunk_size, block_sizes, interpret)
    o, states, final = forward_pass(q, k, W, U, tok, S0, chunk_size=chunk_size,
                                    interpret=interpret, save_states=save_states)
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
                                 chunk_size=chunk_size, interpret=interpret)
    # [K, V] tiles sit in VMEM, not registers: chunk_grads takes the whole V.
    grads = chunk_kernels.chunk_grads(
        q, k, v, tok, states, dstates, do, chunk_size=chunk_size,
        call_params=_call_params(interpret, ("parallel", "parallel")),
        solve_precision=block_sizes.solve_precision, block_v=v.shape[-1])
    return chunk_kernels.input_cotangents((q, k, v, beta, G, c), grads, dS0)


_delta_rule.defvjp(_delta_rule_fwd, _delta_rule_bwd)


def delta_rule_tpu(q_NTK, k_NTK, v_NTV, beta_NT, G_NT, c_NT, S0_NKV, *, chunk_size: int,
                   block_sizes: Optional[BlockSizes] = None, interpret: bool = False):
    """(o_NTV in q's dtype, final state_NKV f32); arguments as delta_rule_gpu's.

    block_sizes None = BlockSizes.tpu(). Head dims should be multiples of 128 lanes
    (deltajax/ops/pallas.py pads them) and the chunk a multiple of 8 sublanes.
    """
    block_sizes = BlockSizes.tpu() if block_sizes is None else block_sizes
    chunk_kernels.check_layout(q_NTK, k_NTK, v_NTV, beta_NT, G_NT, c_NT, S0_NKV,
                               chunk_size, block_sizes)
    return _delta_rule(q_NTK, k_NTK, v_NTV, beta_NT, G_NT, c_NT, S0_NKV, int(chunk_size),
                       block_sizes, bool(interpret))
