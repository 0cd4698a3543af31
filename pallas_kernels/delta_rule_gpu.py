"""Chunked delta rule on GPU: Pallas with the Triton lowering, forward and hand-written backward.

The two sequential passes run one program per (value block, batch*head) and loop over chunks
inside, with the [K, BV] state in registers (Triton programs cannot hand state to one another).
Splitting V into BV columns is exact: every term of the chunk update is column-wise in V, so
each program redoes only the cheap [C, C] work. The chunk-parallel kernels are in
chunk_kernels.py. Layout is [batch*heads, time, dim] with time a multiple of the chunk and head
dims powers of two >= 16 (tl.dot needs 16x16 tiles); deltajax/ops/pallas.py pads to that.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels import chunk_math, chunked_vjp
from pallas_kernels.shapes import out_struct
from pallas_kernels.chunk_kernels import TokenScalars

MIN_CHUNK = 16
_MAX_BV = 64  # a 128 x 64 f32 state is 32 KiB of registers per program: more spills


def _value_block(V):
    return min(V, _MAX_BV)


def _params(interpret, num_warps=4):
    return dict(interpret=interpret,
                compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=2))


def _load_chunk(bh, n, C, q_ref, k_ref, w_ref, tok_refs):
    t = pl.ds(n * C, C)
    f32 = lambda ref: ref[bh, t, :].astype(jnp.float32)
    beta_ref, Gc_ref, Gr_ref, cc_ref, cr_ref = tok_refs
    dk = chunk_math.decay(Gc_ref[bh, t, :], Gr_ref[bh, n, :, :], cc_ref[bh, t, :],
                          cr_ref[bh, n, :, :])
    return f32(q_ref), f32(k_ref), w_ref[bh, t, :], dk


def _forward_kernel(q_ref, k_ref, w_ref, u_ref, *refs, C, N, BV, dtype, save_states):
    tok_refs, (s0_ref, o_ref, *states_ref, final_ref) = refs[:5], refs[5:]
    iv, bh = pl.program_id(0), pl.program_id(1)
    vs = pl.ds(iv * BV, BV)

    def chunk(n, S_KV):
        q, k, W, dk = _load_chunk(bh, n, C, q_ref, k_ref, w_ref, tok_refs)
        t = pl.ds(n * C, C)
        if save_states:
            states_ref[0][bh, n, :, vs] = S_KV
        U = u_ref[bh, t, vs].astype(jnp.float32)
        o, S_KV = chunk_math.chunk_forward(q, k, W, U, S_KV, dk, dtype)
        o_ref[bh, t, vs] = o.astype(o_ref.dtype)
        return S_KV

    final_ref[bh, :, vs] = jax.lax.fori_loop(0, N, chunk, s0_ref[bh, :, vs])


def _backward_kernel(q_ref, k_ref, w_ref, do_ref, *refs, C, N, BV, dtype):
    tok_refs, (dfinal_ref, dstates_ref, ds0_ref) = refs[:5], refs[5:]
    iv, bh = pl.program_id(0), pl.program_id(1)
    vs = pl.ds(iv * BV, BV)

    def chunk(i, dS_KV):
        n = N - 1 - i
        q, k, W, dk = _load_chunk(bh, n, C, q_ref, k_ref, w_ref, tok_refs)
        dstates_ref[bh, n, :, vs] = dS_KV
        do = do_ref[bh, pl.ds(n * C, C), vs].astype(jnp.float32)
        return chunk_math.chunk_state_grad(q, k, W, do, dS_KV, dk, dtype)

    ds0_ref[bh, :, vs] = jax.lax.fori_loop(0, N, chunk, dfinal_ref[bh, :, vs])


def _forward_pass(q, k, W, U, tok: TokenScalars, S0, *, C, save_states, interpret):
    BH, Tp, K = q.shape
    V = U.shape[-1]
    N, BV = Tp // C, _value_block(V)
    kernel = functools.partial(_forward_kernel, C=C, N=N, BV=BV, dtype=q.dtype,
                               save_states=save_states)
    inputs = (q, k, W, U, *tok, S0)
    states = [out_struct((BH, N, K, V), jnp.float32, inputs)] if save_states else []
    o, *states, final = pl.pallas_call(
        kernel, grid=(V // BV, BH),
        out_shape=[out_struct((BH, Tp, V), q.dtype, inputs), *states,
                   out_struct((BH, K, V), jnp.float32, inputs)],
        name="delta_rule_forward_gpu", **_params(interpret),
    )(*inputs)
    return o, (states[0] if save_states else None), final


def _backward_pass(q, k, W, do, tok: TokenScalars, dfinal, *, C, interpret):
    BH, Tp, K = q.shape
    V = do.shape[-1]
    N, BV = Tp // C, _value_block(V)
    kernel = functools.partial(_backward_kernel, C=C, N=N, BV=BV, dtype=q.dtype)
    inputs = (q, k, W, do, *tok, dfinal)
    return pl.pallas_call(
        kernel, grid=(V // BV, BH),
        out_shape=[out_struct((BH, N, K, V), jnp.float32, inputs),
                   out_struct((BH, K, V), jnp.float32, inputs)],
        name="delta_rule_backward_gpu", **_params(interpret),
    )(*inputs)


@functools.lru_cache(maxsize=None)
def _op(interpret: bool):
    return chunked_vjp.build(chunked_vjp.StatePasses(
        forward=functools.partial(_forward_pass, interpret=interpret),
        backward=functools.partial(_backward_pass, interpret=interpret),
        # chunk_grads holds S and dS [K, BV] at once: 8 warps give it twice the registers.
        parallel_params=_params(interpret, num_warps=8),
        solve_precision=jax.lax.Precision.HIGH,   # TF32 tensor cores
        block_v=_value_block))


def delta_rule_chunked(q_BHTK, k_BHTK, v_BHTV, beta_BHT, G_BHT, c_BHT, S0_BHKV, *,
                       chunk_size: int, interpret: bool = False):
    """(o_BHTV in q's dtype, final state_BHKV f32), differentiable in all but c.

    Args:
      q_BHTK, k_BHTK, v_BHTV: bf16 or f32, time a multiple of chunk_size; q already scaled.
      beta_BHT: f32. G_BHT: the within-chunk cumulative sum of the log-gate (f32).
      c_BHT: f32 number of segment starts (tokens whose segment differs from the previous
        token's) in the chunk up to and including each token: 0 = the entering state's segment.
      S0_BHKV: f32 initial state.
    """
    chunked_vjp.check_layout(q_BHTK, k_BHTK, v_BHTV, beta_BHT, G_BHT, c_BHT, S0_BHKV,
                             chunk_size, min_chunk=MIN_CHUNK)
    for name, x in (("q", q_BHTK), ("v", v_BHTV)):
        if x.shape[-1] < 16 or x.shape[-1] & (x.shape[-1] - 1):
            raise ValueError(f"{name} must have a power-of-two head dim >= 16, got {x.shape}")
    return _op(bool(interpret))(q_BHTK, k_BHTK, v_BHTV, beta_BHT, G_BHT, c_BHT, S0_BHKV,
                                int(chunk_size))
