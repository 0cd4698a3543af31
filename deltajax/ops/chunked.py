"""Chunkwise-parallel delta rule (WY representation / UT transform), hand-written backward.

The derivation is in deltajax/ops/README.md. Per chunk of C tokens entering with state S [K, V],
with G the within-chunk cumulative log-gate and D[i, j] = exp(G_i - G_j) for j <= i in the same
segment (else 0), gamma_i = exp(G_i) while token i is still in the segment S belongs to:

    A  = I + diag(beta) (strict_lower(D) * K K^T)         unit lower triangular
    W  = A^-1 diag(beta * gamma) K,   U = A^-1 diag(beta) V
    u  = U - W S                                          what the chunk writes into the state
    O  = diag(gamma) Q S + (D * Q K^T) u
    S' = gamma_C S + (diag(D[C, :]) K)^T u

Only S and its cotangent are sequential. Two layouts compute the same thing:
- batched: every chunk's factors (A^-1, W, U, the decay masks) as batched matmuls over chunks,
  a forward scan carrying S through u = U - W S and S' (two matmuls a step), the outputs batched;
  the backward recomputes the factors, runs one reverse scan for dS and du (two matmuls a step)
  and the chain through W, U, A and the masks batched after it. Memory O(T (K + V + C)).
- scanned: each scan step computes one chunk's factors and its whole forward (or backward), so
  one chunk's intermediates are live: memory O(T (K + V) + (T / C) K V).
Both keep only the inputs and the state entering each chunk for the backward. `_layouts` picks
one for a call that is only evaluated and one for a differentiated call: on CPU the scanned
layout, except a differentiated call of a few chunks whose [chunks, C, max(C, K, V)] arrays stay
small (large batched arrays leave the cache and run slower than the scan's, and keep every
chunk's factors in memory); elsewhere the batched layout (deltajax/ops/README.md has the
measurements).
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

_PRECISION = jax.lax.Precision.HIGHEST


def _einsum(spec, *operands):
    return jnp.einsum(spec, *operands, precision=_PRECISION)


def _matmul(a, b):
    return _einsum("...ij,...jk->...ik", a, b)


def delta_rule_chunked(
    q_BTHK: jax.Array,
    k_BTHK: jax.Array,
    v_BTHV: jax.Array,
    beta_BTH: jax.Array,
    *,
    scale: float,
    chunk_size: int,
    gate_BTH: Optional[jax.Array] = None,
    initial_state_BHKV: Optional[jax.Array] = None,
    segment_ids_BT: Optional[jax.Array] = None,
    batched: Optional[bool] = None,
) -> tuple[jax.Array, jax.Array]:
    """Returns (o_BTHV in the input dtype, final state_BHKV in float32).

    chunk_size is taken as given (delta_rule clamps it to the sequence): a chunk longer than T
    is correct, only padded. batched: force one layout (module docstring); None lets _layouts
    pick.
    """
    B, T, H, K = q_BTHK.shape
    V = v_BTHV.shape[-1]
    C = chunk_size
    N = -(-T // C)
    pad = N * C - T

    def to_chunks(x_BTH_):
        # Zero padding makes padded tokens no-ops: beta = k = v = 0 and g = 0.
        x = jnp.pad(x_BTH_.astype(jnp.float32), [(0, 0), (0, pad)] + [(0, 0)] * (x_BTH_.ndim - 2))
        x = x.reshape(B, N, C, *x.shape[2:])
        return jnp.moveaxis(x, (1, 3), (0, 2))  # [N, B, H, C, ...]

    q_NBHCK = to_chunks(q_BTHK) * scale
    k_NBHCK = to_chunks(k_BTHK)
    v_NBHCV = to_chunks(v_BTHV)
    beta_NBHC = to_chunks(beta_BTH)
    if gate_BTH is None:
        G_NBHC = jnp.zeros((N, B, H, C), jnp.float32)
    else:
        G_NBHC = jnp.cumsum(to_chunks(gate_BTH), axis=-1)

    if segment_ids_BT is None:
        seg_NBC = jnp.zeros((N, B, C), jnp.int32)
    else:
        padded_BT = jnp.pad(segment_ids_BT, [(0, 0), (0, pad)], mode="edge")
        seg_NBC = jnp.moveaxis(padded_BT.reshape(B, N, C), 1, 0)
    # Segment of the state entering each chunk: that of the previous token (token 0's for chunk 0).
    seg_prev_NB = jnp.concatenate([seg_NBC[:1, :, 0], seg_NBC[:-1, :, -1]], axis=0)

    if initial_state_BHKV is None:
        S0_BHKV = jnp.zeros((B, H, K, V), jnp.float32)
    else:
        S0_BHKV = initial_state_BHKV.astype(jnp.float32)

    layouts = ((batched, batched) if batched is not None
               else _layouts(jax.default_backend(), N, N * B * H * C * max(C, K, V)))
    o_NBHCV, final_BHKV = _CHUNKED[layouts](
        q_NBHCK, k_NBHCK, v_NBHCV, beta_NBHC, G_NBHC, seg_NBC, seg_prev_NB, S0_BHKV)
    o_BTHV = jnp.moveaxis(o_NBHCV, (0, 2), (1, 3)).reshape(B, N * C, H, V)[:, :T]
    return o_BTHV.astype(v_BTHV.dtype), final_BHKV


# The CPU's batched backward: for at most this many chunks, while one [chunks, C, max(C, K, V)]
# float32 array over the batch and heads is at most this many bytes (T <= 512 at K = 64, H = 4,
# B = 1; the CPU presets of the studies, 1 or 2 chunks of batch 32).
CPU_BATCHED_MAX_CHUNKS = 8
CPU_BATCHED_MAX_BYTES = 1 << 20


def _layouts(platform: str, num_chunks: int, array_elements: int) -> tuple[bool, bool]:
    """Whether an evaluated call and a differentiated call take the batched layout, on
    `platform`, for num_chunks chunks and [chunks, C, max(C, K, V)] arrays of array_elements
    elements. Differentiated, the batched layout's forward and backward compute the same factors
    in one program, which XLA computes once: faster where the scan has few steps, and the reason
    its memory is that of the stored factors (1.7-2x the scanned layout's at T = 1024, K = 64),
    which is why it stops at a few chunks."""
    if platform != "cpu":
        return True, True
    return False, (num_chunks <= CPU_BATCHED_MAX_CHUNKS
                   and 4 * array_elements <= CPU_BATCHED_MAX_BYTES)


class _Factors(NamedTuple):
    """State-independent quantities of every chunk (float32, [N, B, H, ...])."""
    D: jax.Array        # [C, C] within-segment decay from token j to token i (lower triangular)
    gamma: jax.Array    # [C] decay of the entering state up to token i (0 after a reset)
    KK: jax.Array       # [C, C] K K^T
    QK: jax.Array       # [C, C] Q K^T
    P: jax.Array        # [C, C] D * Q K^T, how the new values reach the outputs
    T: jax.Array        # [C, C] A^-1
    W: jax.Array        # [C, K]
    U: jax.Array        # [C, V]
    Kd: jax.Array       # [C, K] diag(D[C, :]) K, each key decayed to the chunk's end
    Qg: jax.Array       # [C, K] diag(gamma) Q, the queries that read the entering state


def _leading_ones(x, ndim):
    """x with unit axes in front, to ndim axes (this code never relies on rank promotion)."""
    return x.reshape((1,) * (ndim - x.ndim) + x.shape)


def _factors(q, k, v, beta, G, seg_XBC, seg_prev_XB) -> _Factors:
    """The factors of one chunk (leading axes B, H) or of every chunk (N, B, H) at once."""
    C = q.shape[-2]
    same_XBCC = seg_XBC[..., :, None] == seg_XBC[..., None, :]
    causal = _leading_ones(jnp.tril(jnp.ones((C, C), bool)), same_XBCC.ndim)
    mask_XB1CC = (causal & same_XBCC)[..., None, :, :]
    G_diff = _pairwise_difference(G)
    # Masked before exp: G_i - G_j > 0 above the diagonal could overflow.
    D = jnp.where(mask_XB1CC, jnp.exp(jnp.where(mask_XB1CC, G_diff, 0.0)), 0.0)
    in_entering_segment_XB1C = (seg_XBC == seg_prev_XB[..., None])[..., None, :]
    gamma = jnp.exp(G) * in_entering_segment_XB1C

    KK = _einsum("...ik,...jk->...ij", k, k)
    QK = _einsum("...ik,...jk->...ij", q, k)
    eye = _leading_ones(jnp.eye(C, dtype=jnp.float32), KK.ndim)
    T = _unit_lower_inverse(eye + beta[..., :, None] * jnp.tril(D, -1) * KK)
    W = _einsum("...ij,...jk->...ik", T, (beta * gamma)[..., None] * k)
    U = _einsum("...ij,...jv->...iv", T, beta[..., None] * v)
    return _Factors(D, gamma, KK, QK, D * QK, T, W, U, D[..., -1, :, None] * k,
                    gamma[..., None] * q)


def _pairwise_difference(G):
    """[..., i, j] = G[..., i] - G[..., j], as the product [G, 1] [1, -G]^T: the same float32
    rounding as the subtraction, and XLA's CPU backend (jaxlib 0.10) runs exp of a dot's output
    ~8x faster than exp of a broadcast difference (7 us against 60 us for [4, 64, 64])."""
    ones = jnp.ones_like(G)
    return _einsum("...ic,...jc->...ij", jnp.stack([G, ones], -1), jnp.stack([ones, -G], -1))


def _unit_lower_inverse(A_BHCC: jax.Array) -> jax.Array:
    """A^-1 of unit lower-triangular matrices, matmuls only: the 8 x 8 diagonal blocks by the
    product form, then blockwise doubling.

    Not lax.linalg.triangular_solve: on CPU that is a LAPACK custom call (jaxlib 0.10) that
    fans its batch out to XLA's intra-op thread pool and blocks on it, which deadlocks a
    data-parallel step when the other virtual devices hold every pool thread in the gradient
    all-reduce. A diagonal block I + N (N strictly lower, so N^8 = 0) has the inverse
    (I - N)(I + N^2)(I + N^4): four matmuls where doubling from 1 x 1 blocks took three rounds
    of small ones (fwd+bwd 1.03-1.10x). The blocks' inverses then double in size each round:
    [[A11, 0], [A21, A22]]^-1 = [[T11, 0], [-T22 A21 T11, T22]].
    """
    C = A_BHCC.shape[-1]
    Cp = 1 << (C - 1).bit_length()
    lead = A_BHCC.shape[:-2]
    if Cp != C:  # identity padding keeps the leading C x C block's inverse
        A_BHCC = jnp.broadcast_to(jnp.eye(Cp, dtype=A_BHCC.dtype), lead + (Cp, Cp)
                                  ).at[..., :C, :C].set(A_BHCC)
    b = min(8, Cp)
    diag_BHMbb = jnp.einsum("...mimj->...mij", A_BHCC.reshape(lead + (Cp // b, b, Cp // b, b)))
    eye = _leading_ones(jnp.eye(b, dtype=A_BHCC.dtype), diag_BHMbb.ndim)
    N = diag_BHMbb - eye
    N2 = _matmul(N, N)
    N4 = _matmul(N2, N2)
    T_BHMbb = _matmul(_matmul(eye - N, eye + N2), eye + N4)
    while b < Cp:
        M = Cp // (2 * b)
        diag_BHM22 = jnp.einsum("...mimj->...mij", A_BHCC.reshape(lead + (M, 2 * b, M, 2 * b)))
        T11, T22 = T_BHMbb[..., 0::2, :, :], T_BHMbb[..., 1::2, :, :]
        T21 = -_matmul(_matmul(T22, diag_BHM22[..., b:, :b]), T11)
        T_BHMbb = jnp.concatenate([jnp.concatenate([T11, jnp.zeros_like(T11)], -1),
                                   jnp.concatenate([T21, T22], -1)], -2)
        b *= 2
    return T_BHMbb[..., 0, :C, :C]


def _batched_forward(q, k, v, beta, G, seg, segp, S0_BHKV):
    """(o, final state, the state entering each chunk), the factors of all chunks at once."""
    f = _factors(q, k, v, beta, G, seg, segp)

    def step(S_BHKV, chunk):
        W_n, U_n, Kd_n, gamma_end_n = chunk
        u_BHCV = U_n - _einsum("...ck,...kv->...cv", W_n, S_BHKV)
        S_next = (gamma_end_n[..., None, None] * S_BHKV
                  + _einsum("...ck,...cv->...kv", Kd_n, u_BHCV))
        return S_next, (u_BHCV, S_BHKV)

    final_BHKV, (u, S_N) = jax.lax.scan(step, S0_BHKV, (f.W, f.U, f.Kd, f.gamma[..., -1]))
    o = _einsum("...ck,...kv->...cv", f.Qg, S_N) + _einsum("...ij,...jv->...iv", f.P, u)
    return o, final_BHKV, S_N


# The backward's sums over an axis of C x K products, as matrix-vector products: XLA's CPU
# backend (jaxlib 0.10) runs such a multiply-reduce ~20x slower than the dot (83 us against 4 us
# for [4, 64, 128] inside a scan step); as dots, fwd+bwd ran 1.11-1.16x faster at T = 1024.
def _sum_last(x):
    return _einsum("...i,i->...", x, jnp.ones(x.shape[-1], x.dtype))


def _sum_second_last(x):
    return _einsum("...ij,i->...j", x, jnp.ones(x.shape[-2], x.dtype))


def _backward(f: _Factors, q, k, v, beta, S, dS_next, du, do):
    """Cotangents of one chunk's or every chunk's inputs (leading axes broadcast), given du (of
    u = U - W S) and dS_next (of the state leaving each chunk)."""
    delta = f.D[..., -1, :]
    u = f.U - _einsum("...ck,...kv->...cv", f.W, S)

    # Through u = U - W S, O = Qg S + P u and S' = gamma_C S + Kd^T u (du and dS: the scan).
    dQg = _einsum("...cv,...kv->...ck", do, S)
    dW = -_einsum("...cv,...kv->...ck", du, S)
    dP = _einsum("...iv,...jv->...ij", do, u)
    dKd = _einsum("...cv,...kv->...ck", u, dS_next)

    # Through P = D * QK, Qg = diag(gamma) Q, Kd = diag(D[C, :]) K.
    dPD = dP * f.D
    dq = f.gamma[..., None] * dQg + _einsum("...ij,...jk->...ik", dPD, k)
    dk = _einsum("...ij,...ik->...jk", dPD, q) + delta[..., None] * dKd
    dD = dP * f.QK
    dgamma = _sum_last(q * dQg)
    dgamma = dgamma.at[..., -1].add(_sum_last((S * dS_next).reshape(*S.shape[:-2], -1)))
    dD = dD.at[..., -1, :].add(_sum_last(k * dKd))

    # Through W = A^-1 X, U = A^-1 Y with X = diag(beta gamma) K, Y = diag(beta) V.
    dX = _einsum("...ji,...jk->...ik", f.T, dW)
    dY = _einsum("...ji,...jv->...iv", f.T, du)
    dA = -(_einsum("...ik,...jk->...ij", dX, f.W) + _einsum("...iv,...jv->...ij", dY, f.U))
    k_dX = _sum_last(k * dX)
    dk = dk + (beta * f.gamma)[..., None] * dX
    dv = beta[..., None] * dY
    dbeta = f.gamma * k_dX + _sum_last(v * dY)
    dgamma = dgamma + beta * k_dX

    # Through A = I + diag(beta) (L * KK), L = strict_lower(D).
    L = jnp.tril(f.D, -1)
    dbeta = dbeta + _sum_last(dA * L * f.KK)
    dKK = beta[..., :, None] * dA * L
    dk = dk + _einsum("...ij,...jk->...ik", dKK, k) + _einsum("...ji,...jk->...ik", dKK, k)
    dD = dD + jnp.tril(beta[..., :, None] * dA * f.KK, -1)

    # Through D_ij = exp(G_i - G_j) and gamma_i = exp(G_i), each on its support.
    E = dD * f.D
    dG = _sum_last(E) - _sum_second_last(E) + dgamma * f.gamma
    return dq, dk, dv, dbeta, dG


def _make_chunked(evaluated_forward, forward, backward):
    """The custom VJP: evaluated_forward runs a call nothing differentiates; forward(chunks...,
    S0) -> (o, final, S entering each chunk) and backward(residuals, cotangents) -> the inputs'
    cotangents run a differentiated one."""
    @jax.custom_vjp
    def chunked(q, k, v, beta, G, seg_NBC, seg_prev_NB, S0_BHKV):
        o, final_BHKV, _ = evaluated_forward(q, k, v, beta, G, seg_NBC, seg_prev_NB, S0_BHKV)
        return o, final_BHKV

    def chunked_fwd(q, k, v, beta, G, seg_NBC, seg_prev_NB, S0_BHKV):
        o, final_BHKV, S_NBHKV = forward(q, k, v, beta, G, seg_NBC, seg_prev_NB, S0_BHKV)
        # S_NBHKV[n], the state entering chunk n, is the only per-chunk residual: the factors
        # are recomputed in the backward rather than kept.
        return (o, final_BHKV), (q, k, v, beta, G, seg_NBC, seg_prev_NB, S_NBHKV)

    chunked.defvjp(chunked_fwd, backward)
    return chunked


def _batched_backward(residuals, cotangents):
    q, k, v, beta, G, seg, segp, S_N = residuals
    do, dfinal_BHKV = cotangents
    f = _factors(q, k, v, beta, G, seg, segp)
    # du = P^T dO + Kd dS' and dS = Qg^T dO + gamma_C dS' - W^T du: the dO parts batched, the
    # dS' parts chunk by chunk from the last.
    du_from_o = _einsum("...ij,...iv->...jv", f.P, do)
    dS_from_o = _einsum("...ck,...cv->...kv", f.Qg, do)

    def step(dS_next, chunk):
        du_from_o_n, dS_from_o_n, Kd_n, W_n, gamma_end_n = chunk
        du_BHCV = du_from_o_n + _einsum("...ck,...kv->...cv", Kd_n, dS_next)
        dS = (dS_from_o_n + gamma_end_n[..., None, None] * dS_next
              - _einsum("...ck,...cv->...kv", W_n, du_BHCV))
        return dS, (du_BHCV, dS_next)

    dS0_BHKV, (du, dS_next_N) = jax.lax.scan(
        step, dfinal_BHKV, (du_from_o, dS_from_o, f.Kd, f.W, f.gamma[..., -1]), reverse=True)
    dq, dk, dv, dbeta, dG = _backward(f, q, k, v, beta, S_N, dS_next_N, du, do)
    return dq, dk, dv, dbeta, dG, None, None, dS0_BHKV


def _scanned_forward(q, k, v, beta, G, seg_NBC, seg_prev_NB, S0_BHKV):
    """(o, final state, the state entering each chunk), one chunk's factors a scan step."""
    def step(S_BHKV, chunk):
        f = _factors(*chunk)
        u_BHCV = f.U - _einsum("...ck,...kv->...cv", f.W, S_BHKV)
        o_BHCV = (_einsum("...ck,...kv->...cv", f.Qg, S_BHKV)
                  + _einsum("...ij,...jv->...iv", f.P, u_BHCV))
        S_next = (f.gamma[..., -1, None, None] * S_BHKV
                  + _einsum("...ck,...cv->...kv", f.Kd, u_BHCV))
        return S_next, (o_BHCV, S_BHKV)

    final_BHKV, (o, S_NBHKV) = jax.lax.scan(
        step, S0_BHKV, (q, k, v, beta, G, seg_NBC, seg_prev_NB))
    return o, final_BHKV, S_NBHKV


def _scanned_backward(residuals, cotangents):
    q, k, v, beta, G, seg_NBC, seg_prev_NB, S_NBHKV = residuals
    do_NBHCV, dfinal_BHKV = cotangents

    def step(dS_next, chunk):
        q, k, v, beta, G, seg, seg_prev, S, do = chunk
        f = _factors(q, k, v, beta, G, seg, seg_prev)
        du = (_einsum("...ij,...iv->...jv", f.P, do)
              + _einsum("...ck,...kv->...cv", f.Kd, dS_next))
        dS = (_einsum("...ck,...cv->...kv", f.Qg, do) + f.gamma[..., -1, None, None] * dS_next
              - _einsum("...ck,...cv->...kv", f.W, du))
        return dS, _backward(f, q, k, v, beta, S, dS_next, du, do)

    dS0_BHKV, (dq, dk, dv, dbeta, dG) = jax.lax.scan(
        step, dfinal_BHKV, (q, k, v, beta, G, seg_NBC, seg_prev_NB, S_NBHKV, do_NBHCV),
        reverse=True)
    return dq, dk, dv, dbeta, dG, None, None, dS0_BHKV


_FORWARDS = {True: _batched_forward, False: _scanned_forward}
_BACKWARDS = {True: _batched_backward, False: _scanned_backward}
# (evaluated call batched, differentiated call batched) -> the op; the pairs _layouts and the
# `batched` argument give.
_CHUNKED = {(e, d): _make_chunked(_FORWARDS[e], _FORWARDS[d], _BACKWARDS[d])
            for e, d in ((True, True), (False, False), (False, True))}
