"""Chunked delta rule on TPU: Pallas Mosaic TPU, forward and hand-written backward.

The sequential passes have grid (batch*heads "parallel", chunks "arbitrary"): Mosaic runs the
chunk axis in order on one core, so the [K, V] state lives in a VMEM scratch buffer from one
grid step to the next while BlockSpecs stream each chunk's (C, head_dim) tiles through VMEM.
The backward pass walks the chunks in reverse through its index maps. The chunk-parallel kernels
are in chunk_kernels.py. Block shapes: (C, K) tiles with C a multiple of 8 sublanes and K the
full (lane-padded) head dim, (C, 1) columns and (1, C) rows (full trailing dims), (K, V) states.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import chunk_math, chunked_vjp
from pallas_kernels.chunk_kernels import TokenScalars, load_decay
from pallas_kernels.shapes import out_struct

MIN_CHUNK = 16


def _params(interpret, semantics):
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
    tile = lambda d: pl.BlockSpec((None, C, d), lambda bh, i: (bh, chunk(i), 0))
    col = pl.BlockSpec((None, C, 1), lambda bh, i: (bh, chunk(i), 0))
    row = pl.BlockSpec((None, None, 1, C), lambda bh, i: (bh, chunk(i), 0, 0))
    per_chunk_state = pl.BlockSpec((None, None, K, V), lambda bh, i: (bh, chunk(i), 0, 0))
    state = pl.BlockSpec((None, K, V), lambda bh, i: (bh, 0, 0))
    return tile, [col, col, row, col, row], per_chunk_state, state


def _forward_kernel(q_ref, k_ref, w_ref, u_ref, beta_ref, Gc_ref, Gr_ref, cc_ref, cr_ref, s0_ref,
                    o_ref, *refs, dtype, save_states):
    *states_ref, final_ref, S_ref = refs
    del beta_ref  # folded into W and U already
    n = pl.program_id(1)

    @pl.when(n == 0)
    def _():
        S_ref[...] = s0_ref[...]

    S_KV = S_ref[...]
    if save_states:
        states_ref[0][...] = S_KV
    dk = load_decay(Gc_ref, Gr_ref, cc_ref, cr_ref)
    o, S_KV = chunk_math.chunk_forward(q_ref[...].astype(jnp.float32),
                                       k_ref[...].astype(jnp.float32), w_ref[...],
                                       u_ref[...].astype(jnp.float32), S_KV, dk, dtype)
    o_ref[...] = o.astype(o_ref.dtype)
    S_ref[...] = S_KV

    @pl.when(n == pl.num_programs(1) - 1)
    def _():
        final_ref[...] = S_KV


def _backward_kernel(q_ref, k_ref, w_ref, do_ref, beta_ref, Gc_ref, Gr_ref, cc_ref, cr_ref,
                     dfinal_ref, dstates_ref, ds0_ref, dS_ref, *, dtype):
    del beta_ref
    i = pl.program_id(1)

    @pl.when(i == 0)
    def _():
        dS_ref[...] = dfinal_ref[...]

    dS_KV = dS_ref[...]
    dstates_ref[...] = dS_KV
    dk = load_decay(Gc_ref, Gr_ref, cc_ref, cr_ref)
    dS_KV = chunk_math.chunk_state_grad(q_ref[...].astype(jnp.float32),
                                        k_ref[...].astype(jnp.float32), w_ref[...],
                                        do_ref[...].astype(jnp.float32), dS_KV, dk, dtype)
    dS_ref[...] = dS_KV

    @pl.when(i == pl.num_programs(1) - 1)
    def _():
        ds0_ref[...] = dS_KV


def _forward_pass(q, k, W, U, tok: TokenScalars, S0, *, C, save_states, interpret):
    BH, Tp, K = q.shape
    V = U.shape[-1]
    N = Tp // C
    tile, scalars, per_chunk_state, state = _specs(C, K, V, lambda i: i)
    inputs = (q, k, W, U, *tok, S0)
    states = [out_struct((BH, N, K, V), jnp.float32, inputs)] if save_states else []
    o, *states, final = pl.pallas_call(
        functools.partial(_forward_kernel, dtype=q.dtype, save_states=save_states),
        grid=(BH, N),
        in_specs=[tile(K), tile(K), tile(K), tile(V)] + scalars + [state],
        out_specs=[tile(V)] + [per_chunk_state] * save_states + [state],
        out_shape=[out_struct((BH, Tp, V), q.dtype, inputs), *states,
                   out_struct((BH, K, V), jnp.float32, inputs)],
        scratch_shapes=[pltpu.VMEM((K, V), jnp.float32)],
        name="delta_rule_forward_tpu",
        **_params(interpret, ("parallel", "arbitrary")),
    )(*inputs)
    return o, (states[0] if save_states else None), final


def _backward_pass(q, k, W, do, tok: TokenScalars, dfinal, *, C, interpret):
    BH, Tp, K = q.shape
    V = do.shape[-1]
    N = Tp // C
    tile, scalars, per_chunk_state, state = _specs(C, K, V, lambda i: N - 1 - i)
    inputs = (q, k, W, do, *tok, dfinal)
    return pl.pallas_call(
        functools.partial(_backward_kernel, dtype=q.dtype),
        grid=(BH, N),
        in_specs=[tile(K), tile(K), tile(K), tile(V)] + scalars + [state],
        out_specs=[per_chunk_state, state],
        out_shape=[out_struct((BH, N, K, V), jnp.float32, inputs),
                   out_struct((BH, K, V), jnp.float32, inputs)],
        scratch_shapes=[pltpu.VMEM((K, V), jnp.float32)],
        name="delta_rule_backward_tpu",
        **_params(interpret, ("parallel", "arbitrary")),
    )(*inputs)


@functools.lru_cache(maxsize=None)
def _op(interpret: bool):
    return chunked_vjp.build(chunked_vjp.StatePasses(
        forward=functools.partial(_forward_pass, interpret=interpret),
        backward=functools.partial(_backward_pass, interpret=interpret),
        parallel_params=_params(interpret, ("parallel", "parallel")),
        solve_precision=jax.lax.Precision.HIGHEST,   # Mosaic has DEFAULT or HIGHEST
        block_v=lambda V: V))   # [K, V] tiles sit in VMEM, not registers: no split


def delta_rule_chunked(q_BHTK, k_BHTK, v_BHTV, beta_BHT, G_BHT, c_BHT, S0_BHKV, *,
                       chunk_size: int, interpret: bool = False):
    """(o_BHTV in q's dtype, final state_BHKV f32); arguments as delta_rule_gpu's.

    Head dims should be multiples of 128 lanes (deltajax/ops/pallas.py pads them) and the chunk
    a multiple of 8 sublanes.
    """
    chunked_vjp.check_layout(q_BHTK, k_BHTK, v_BHTV, beta_BHT, G_BHT, c_BHT, S0_BHKV,
                             chunk_size, min_chunk=MIN_CHUNK)
    return _op(bool(interpret))(q_BHTK, k_BHTK, v_BHTV, beta_BHT, G_BHT, c_BHT, S0_BHKV,
                                int(chunk_size))
