"""The two chunk-parallel kernels, shared by the GPU and TPU kernel sets.

`prepare` computes each chunk's WY factors W, U (the UT solve); `chunk_grads` recomputes them and
turns (S, dS', dO) of a chunk into the cotangents of its inputs. Neither carries anything between
chunks, so both grids are fully parallel; the sequential state passes live in delta_rule_gpu.py
and delta_rule_tpu.py, which also supply these kernels' compiler parameters.

Array names give shapes: N = batch*heads, T = time (a multiple of the chunk C), M = T / C chunks,
K and V the (padded) head dims. Block shapes are (C, head_dim) tiles, (C, 1) columns and (1, C)
rows: powers of two for Triton, and full trailing dims or multiples of 8 sublanes for Mosaic.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import chunk_math
from pallas_kernels.block_sizes import BlockSizes
from pallas_kernels.shapes import out_struct


class TokenScalars(NamedTuple):
    """Per-token f32 scalars in the two layouts the kernels load (columns and rows)."""
    beta_NT1: jax.Array
    G_NT1: jax.Array      # within-chunk cumulative log-gate
    G_NM1C: jax.Array
    c_NT1: jax.Array      # segment starts so far in the chunk (0 = the entering state's segment)
    c_NM1C: jax.Array


def token_scalars(beta_NT, G_NT, c_NT, chunk_size: int) -> TokenScalars:
    N, T = beta_NT.shape
    col = lambda x: x.astype(jnp.float32).reshape(N, T, 1)
    row = lambda x: x.astype(jnp.float32).reshape(N, T // chunk_size, 1, chunk_size)
    return TokenScalars(col(beta_NT), col(G_NT), row(G_NT), col(c_NT), row(c_NT))


def load_decay(G_C1_ref, G_1C_ref, c_C1_ref, c_1C_ref) -> chunk_math.Decay:
    return chunk_math.decay_masks(G_C1_ref[...], G_1C_ref[...], c_C1_ref[...], c_1C_ref[...])


def check_layout(q_NTK, k_NTK, v_NTV, beta_NT, G_NT, c_NT, S0_NKV, chunk_size, block_sizes):
    """Raises ValueError naming the argument when the kernels' layout is not met."""
    if not isinstance(block_sizes, BlockSizes):
        raise ValueError(f"block_sizes must be a BlockSizes or None, got {block_sizes!r}")
    N, T, K = q_NTK.shape
    V = v_NTV.shape[-1]
    min_chunk = block_sizes.min_chunk
    if chunk_size < min_chunk or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two >= block_sizes.min_chunk="
                         f"{min_chunk}, got {chunk_size}")
    if T % chunk_size:
        raise ValueError(f"q must have a time length that is a multiple of chunk_size="
                         f"{chunk_size}, got shape {q_NTK.shape}")
    for name, x, shape in (("k", k_NTK, (N, T, K)), ("v", v_NTV, (N, T, V)),
                           ("beta", beta_NT, (N, T)), ("G", G_NT, (N, T)), ("c", c_NT, (N, T)),
                           ("S0", S0_NKV, (N, K, V))):
        if tuple(x.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")


def _tile(C, d):
    return pl.BlockSpec((None, C, d), lambda n, j: (n, j, 0))


def _scalar_specs(C):
    col = pl.BlockSpec((None, C, 1), lambda n, j: (n, j, 0))
    row = pl.BlockSpec((None, None, 1, C), lambda n, j: (n, j, 0, 0))
    return [col, col, row, col, row]


def _prepare_kernel(k_ref, v_ref, beta_ref, G_C1_ref, G_1C_ref, c_C1_ref, c_1C_ref, w_ref, u_ref,
                    *, dtype, solve_precision):
    """One chunk: k [C, K], v [C, V], per-token scalars -> w [C, K], u [C, V]."""
    f32 = lambda ref: ref[...].astype(jnp.float32)
    decay = load_decay(G_C1_ref, G_1C_ref, c_C1_ref, c_1C_ref)
    f = chunk_math.factors(f32(k_ref), f32(v_ref), beta_ref[...], decay, dtype, solve_precision)
    w_ref[...] = f.W_CK.astype(w_ref.dtype)
    u_ref[...] = f.U_CV.astype(u_ref.dtype)


def prepare(k_NTK, v_NTV, tok: TokenScalars, *, chunk_size: int, call_params: dict,
            solve_precision):
    """(W_NTK, U_NTV) of every chunk, in the inputs' dtype; grid (N, M).

    The state passes round W to that dtype for their dots anyway; bf16 halves their traffic.
    call_params: the target's pallas_call keywords (interpret, compiler_params).
    """
    N, T, K = k_NTK.shape
    V = v_NTV.shape[-1]
    C = chunk_size
    kernel = lambda *refs: _prepare_kernel(*refs, dtype=k_NTK.dtype,
                                           solve_precision=solve_precision)
    inputs = (k_NTK, v_NTV, *tok)
    return pl.pallas_call(
        kernel,
        grid=(N, T // C),
        in_specs=[_tile(C, K), _tile(C, V)] + _scalar_specs(C),
        out_specs=[_tile(C, K), _tile(C, V)],
        out_shape=[out_struct((N, T, K), k_NTK.dtype, inputs),
                   out_struct((N, T, V), k_NTK.dtype, inputs)],
        name="delta_rule_prepare",
        **call_params,
    )(*inputs)


def _grads_kernel(q_ref, k_ref, v_ref, beta_ref, G_C1_ref, G_1C_ref, c_C1_ref, c_1C_ref, s_ref,
                  ds_ref, do_ref, dq_ref, dk_ref, dv_ref, dbeta_ref, dG_ref, *, dtype,
                  solve_precision):
    """One chunk and value block: q, k [C, K], v, do [C, BV], s, ds [K, BV] -> cotangents."""
    f32 = lambda ref: ref[...].astype(jnp.float32)
    q, k, v, beta = f32(q_ref), f32(k_ref), f32(v_ref), beta_ref[...]
    decay = load_decay(G_C1_ref, G_1C_ref, c_C1_ref, c_1C_ref)
    f = chunk_math.factors(k, v, beta, decay, dtype, solve_precision)
    dq, dk, dv, dbeta, dG = chunk_math.chunk_backward(
        q, k, v, beta, f, s_ref[...], ds_ref[...], f32(do_ref), dtype)
    dq_ref[...] = dq
    dk_ref[...] = dk
    dv_ref[...] = dv
    dbeta_ref[...] = dbeta
    dG_ref[...] = dG


def chunk_grads(q_NTK, k_NTK, v_NTV, tok: TokenScalars, states_NMKV, dstates_NMKV, do_NTV, *,
                chunk_size: int, call_params: dict, solve_precision, block_v: int):
    """float32 (dq_NTK, dk_NTK, dv_NTV, dbeta_NT1, dG_NT1); grid (N, M * V / block_v).

    states[:, j] is the state entering chunk j, dstates[:, j] the cotangent of the state leaving
    it. With block_v < V each program takes block_v value columns: the chunk backward is linear
    in (dO, dS'), whose columns split cleanly, so dv comes out whole and dq, dk, dbeta, dG as
    per-block partials summed here. It keeps the [K, block_v] S and dS tiles in registers.
    """
    N, T, K = q_NTK.shape
    V = v_NTV.shape[-1]
    C, BV = chunk_size, block_v
    NV = V // BV
    # Grid (N, chunk * NV + value block); no integer division in the index maps when NV = 1.
    split = (lambda i: (i, 0)) if NV == 1 else (lambda i: (i // NV, i % NV))
    tile = lambda d: pl.BlockSpec((None, C, d), lambda n, i: (n, split(i)[0], 0))
    v_tile = pl.BlockSpec((None, C, BV), lambda n, i: (n, *split(i)))
    col = pl.BlockSpec((None, C, 1), lambda n, i: (n, split(i)[0], 0))
    row = pl.BlockSpec((None, None, 1, C), lambda n, i: (n, split(i)[0], 0, 0))
    state = pl.BlockSpec((None, None, K, BV), lambda n, i: (n, split(i)[0], 0, split(i)[1]))
    partial = lambda d: pl.BlockSpec((None, None, C, d),
                                     lambda n, i: (split(i)[1], n, split(i)[0], 0))
    inputs = (q_NTK, k_NTK, v_NTV, *tok, states_NMKV, dstates_NMKV, do_NTV)
    f32 = lambda *shape: out_struct(shape, jnp.float32, inputs)
    kernel = lambda *refs: _grads_kernel(*refs, dtype=q_NTK.dtype,
                                         solve_precision=solve_precision)
    dq, dk, dv, dbeta, dG = pl.pallas_call(
        kernel,
        grid=(N, T // C * NV),
        in_specs=[tile(K), tile(K), v_tile, col, col, row, col, row, state, state, v_tile],
        out_specs=[partial(K), partial(K), v_tile, partial(1), partial(1)],
        out_shape=[f32(NV, N, T, K), f32(NV, N, T, K), f32(N, T, V), f32(NV, N, T, 1),
                   f32(NV, N, T, 1)],
        name="delta_rule_chunk_grads",
        **call_params,
    )(*inputs)
    total = lambda x: jnp.sum(x, axis=0)
    return total(dq), total(dk), dv, total(dbeta), total(dG)


def input_cotangents(primals, grads, dS0_NKV):
    """The custom_vjp's cotangents of (q, k, v, beta, G, c, S0): each in its primal's dtype.

    grads: chunk_grads' output; c (segment counts) is not differentiable and gets zeros.
    """
    q, k, v, beta, G, c = primals
    dq, dk, dv, dbeta, dG = grads
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
            dbeta[..., 0].astype(beta.dtype), dG[..., 0].astype(G.dtype), jnp.zeros_like(c),
            dS0_NKV)
