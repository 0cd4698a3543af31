"""The two chunk-parallel kernels, one program per (batch*head, chunk[, value block]), GPU and TPU.

`prepare` computes each chunk's WY factors W, U (the UT solve); `chunk_grads` recomputes them and
turns (S, dS', dO) of a chunk into the cotangents of its inputs. Neither carries anything between
chunks, so both grids are fully parallel; the sequential state passes live in delta_rule_gpu.py
and delta_rule_tpu.py. Block shapes are (C, head_dim) tiles, (C, 1) columns and (1, C) rows:
powers of two for Triton, and full trailing dims or multiples of 8 sublanes for Mosaic TPU.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import chunk_math
from pallas_kernels.shapes import out_struct


class TokenScalars(NamedTuple):
    """Per-token f32 scalars in the two layouts the kernels load."""
    beta_col: jax.Array   # [BH, Tp, 1]
    G_col: jax.Array      # [BH, Tp, 1] within-chunk cumulative log-gate
    G_row: jax.Array      # [BH, N, 1, C]
    c_col: jax.Array      # [BH, Tp, 1] segment starts so far in the chunk (0 = entering segment)
    c_row: jax.Array      # [BH, N, 1, C]


def token_scalars(beta_BHT, G_BHT, c_BHT, C: int) -> TokenScalars:
    BH, Tp = beta_BHT.shape
    col = lambda x: x.astype(jnp.float32).reshape(BH, Tp, 1)
    row = lambda x: x.astype(jnp.float32).reshape(BH, Tp // C, 1, C)
    return TokenScalars(col(beta_BHT), col(G_BHT), row(G_BHT), col(c_BHT), row(c_BHT))


def _tile(C, d):
    return pl.BlockSpec((None, C, d), lambda bh, n: (bh, n, 0))


def _scalar_specs(C):
    col = pl.BlockSpec((None, C, 1), lambda bh, n: (bh, n, 0))
    row = pl.BlockSpec((None, None, 1, C), lambda bh, n: (bh, n, 0, 0))
    return [col, col, row, col, row]


def load_decay(G_col_ref, G_row_ref, c_col_ref, c_row_ref) -> chunk_math.Decay:
    return chunk_math.decay(G_col_ref[...], G_row_ref[...], c_col_ref[...], c_row_ref[...])


def _prepare_kernel(k_ref, v_ref, beta_ref, Gc_ref, Gr_ref, cc_ref, cr_ref, w_ref, u_ref, *,
                    dtype, solve_precision):
    f32 = lambda ref: ref[...].astype(jnp.float32)
    dk = load_decay(Gc_ref, Gr_ref, cc_ref, cr_ref)
    f = chunk_math.factors(f32(k_ref), f32(v_ref), beta_ref[...], dk, dtype, solve_precision)
    w_ref[...] = f.W_CK.astype(w_ref.dtype)
    u_ref[...] = f.U_CV.astype(u_ref.dtype)


def prepare(k_BHTK, v_BHTV, tok: TokenScalars, *, C: int, call_params: dict, solve_precision):
    """W [BH, Tp, K] and U [BH, Tp, V] of every chunk, in the inputs' dtype.

    The state passes round W to that dtype for their dots anyway; bf16 halves their traffic.
    """
    BH, Tp, K = k_BHTK.shape
    V = v_BHTV.shape[-1]
    kernel = lambda *refs: _prepare_kernel(*refs, dtype=k_BHTK.dtype,
                                           solve_precision=solve_precision)
    return pl.pallas_call(
        kernel,
        grid=(BH, Tp // C),
        in_specs=[_tile(C, K), _tile(C, V)] + _scalar_specs(C),
        out_specs=[_tile(C, K), _tile(C, V)],
        out_shape=[out_struct((BH, Tp, K), k_BHTK.dtype, (k_BHTK, v_BHTV, *tok)),
                   out_struct((BH, Tp, V), k_BHTK.dtype, (k_BHTK, v_BHTV, *tok))],
        name="delta_rule_prepare",
        **call_params,
    )(k_BHTK, v_BHTV, *tok)


def _grads_kernel(q_ref, k_ref, v_ref, beta_ref, Gc_ref, Gr_ref, cc_ref, cr_ref, s_ref, ds_ref,
                  do_ref, dq_ref, dk_ref, dv_ref, dbeta_ref, dG_ref, *, dtype, solve_precision):
    f32 = lambda ref: ref[...].astype(jnp.float32)
    q, k, v, beta = f32(q_ref), f32(k_ref), f32(v_ref), beta_ref[...]
    f = chunk_math.factors(k, v, beta, load_decay(Gc_ref, Gr_ref, cc_ref, cr_ref), dtype,
                           solve_precision)
    dq, dk, dv, dbeta, dG = chunk_math.chunk_backward(
        q, k, v, beta, f, s_ref[...], ds_ref[...], f32(do_ref), dtype)
    dq_ref[...] = dq
    dk_ref[...] = dk
    dv_ref[...] = dv
    dbeta_ref[...] = dbeta
    dG_ref[...] = dG


def chunk_grads(q_BHTK, k_BHTK, v_BHTV, tok: TokenScalars, states_BHNKV, dstates_BHNKV,
                do_BHTV, *, C: int, call_params: dict, solve_precision, block_v: int):
    """float32 (dq, dk [BH, Tp, K], dv [BH, Tp, V], dbeta, dG [BH, Tp, 1]).

    states[n] is the state entering chunk n, dstates[n] the cotangent of the state leaving it.
    With block_v < V each program takes block_v value columns: the chunk backward is linear in
    (dO, dS'), whose columns split cleanly, so dv comes out whole and dq, dk, dbeta, dG as
    per-block partials summed here. It keeps the [K, block_v] S and dS tiles in registers.
    """
    BH, Tp, K = q_BHTK.shape
    V = v_BHTV.shape[-1]
    BV = block_v
    NV = V // BV
    # Grid (BH, chunk * NV + value block); no integer division in the index maps when NV = 1.
    split = (lambda i: (i, 0)) if NV == 1 else (lambda i: (i // NV, i % NV))
    tile = lambda d: pl.BlockSpec((None, C, d), lambda bh, i: (bh, split(i)[0], 0))
    v_tile = pl.BlockSpec((None, C, BV), lambda bh, i: (bh, *split(i)))
    col = pl.BlockSpec((None, C, 1), lambda bh, i: (bh, split(i)[0], 0))
    row = pl.BlockSpec((None, None, 1, C), lambda bh, i: (bh, split(i)[0], 0, 0))
    state = pl.BlockSpec((None, None, K, BV), lambda bh, i: (bh, split(i)[0], 0, split(i)[1]))
    partial = lambda d: pl.BlockSpec((None, None, C, d), lambda bh, i: (split(i)[1], bh,
                                                                         split(i)[0], 0))
    inputs = (q_BHTK, k_BHTK, v_BHTV, *tok, states_BHNKV, dstates_BHNKV, do_BHTV)
    f32 = lambda *shape: out_struct(shape, jnp.float32, inputs)
    kernel = lambda *refs: _grads_kernel(*refs, dtype=q_BHTK.dtype,
                                         solve_precision=solve_precision)
    dq, dk, dv, dbeta, dG = pl.pallas_call(
        kernel,
        grid=(BH, Tp // C * NV),
        in_specs=[tile(K), tile(K), v_tile, col, col, row, col, row, state, state, v_tile],
        out_specs=[partial(K), partial(K), v_tile, partial(1), partial(1)],
        out_shape=[f32(NV, BH, Tp, K), f32(NV, BH, Tp, K), f32(BH, Tp, V), f32(NV, BH, Tp, 1),
                   f32(NV, BH, Tp, 1)],
        name="delta_rule_chunk_grads",
        **call_params,
    )(*inputs)
    total = lambda x: jnp.sum(x, axis=0)
    return total(dq), total(dk), dv, total(dbeta), total(dG)
