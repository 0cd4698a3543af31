"""Chunkwise-parallel delta rule (WY representation / UT transform), hand-written backward.

The derivation is in deltajax/ops/README.md. Per chunk of C tokens entering with state S [K, V],
with G the within-chunk cumulative log-gate and D[i, j] = exp(G_i - G_j) for j <= i in the same
segment (else 0), gamma_i = exp(G_i) while token i is still in the segment S belongs to:

    A  = I + diag(beta) (strict_lower(D) * K K^T)         unit lower triangular
    W  = A^-1 diag(beta * gamma) K,   U = A^-1 diag(beta) V
    u  = U - W S                                          what the chunk writes into the state
    O  = diag(gamma) Q S + (D * Q K^T) u
    S' = gamma_C S + (diag(D[C, :]) K)^T u

One `lax.scan` runs over chunks forward (carrying S) and one backward (carrying dS); each step
does a whole chunk with matmuls. The backward keeps only the inputs and the state entering each
chunk, and recomputes a chunk's factors when it reaches it, so no more than one chunk's
intermediates are ever live: memory O(T (K + V) + (T / C) K V).
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

_PRECISION = jax.lax.Precision.HIGHEST


def _einsum(spec, *operands):
    return jnp.einsum(spec, *operands, precision=_PRECISION)


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
) -> tuple[jax.Array, jax.Array]:
    """Returns (o_BTHV in the input dtype, final state_BHKV in float32).

    chunk_size is taken as given (delta_rule clamps it to the sequence): a chunk longer than T
    is correct, only padded.
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

    o_NBHCV, final_BHKV = _chunked(q_NBHCK, k_NBHCK, v_NBHCV, beta_NBHC, G_NBHC,
                                   seg_NBC, seg_prev_NB, S0_BHKV)
    o_BTHV = jnp.moveaxis(o_NBHCV, (0, 2), (1, 3)).reshape(B, N * C, H, V)[:, :T]
    return o_BTHV.astype(v_BTHV.dtype), final_BHKV


class _Factors(NamedTuple):
    """State-independent quantities of one chunk (float32, [B, H, ...])."""
    D: jax.Array        # [C, C] within-segment decay from token j to token i (lower triangular)
    gamma: jax.Array    # [C] decay of the entering state up to token i (0 after a reset)
    KK: jax.Array       # [C, C] K K^T
    QK: jax.Array       # [C, C] Q K^T
    T: jax.Array        # [C, C] A^-1
    W: jax.Array        # [C, K]
    U: jax.Array        # [C, V]


def _factors(q_BHCK, k_BHCK, v_BHCV, beta_BHC, G_BHC, seg_BC, seg_prev_B) -> _Factors:
    C = q_BHCK.shape[-2]
    causal_11CC = jnp.tril(jnp.ones((1, 1, C, C), bool))
    mask_B1CC = causal_11CC & (seg_BC[:, :, None] == seg_BC[:, None, :])[:, None]
    G_diff = G_BHC[..., :, None] - G_BHC[..., None, :]
    # Masked before exp: G_i - G_j > 0 above the diagonal could overflow.
    D = jnp.where(mask_B1CC, jnp.exp(jnp.where(mask_B1CC, G_diff, 0.0)), 0.0)
    in_entering_segment_B1C = (seg_BC == seg_prev_B[:, None])[:, None]
    gamma = jnp.exp(G_BHC) * in_entering_segment_B1C

    KK = _einsum("bhik,bhjk->bhij", k_BHCK, k_BHCK)
    QK = _einsum("bhik,bhjk->bhij", q_BHCK, k_BHCK)
    eye = jnp.broadcast_to(jnp.eye(C, dtype=jnp.float32), D.shape)
    A = eye + beta_BHC[..., :, None] * jnp.tril(D, -1) * KK
    T = _unit_lower_inverse(A)
    W = _einsum("bhij,bhjk->bhik", T, (beta_BHC * gamma)[..., None] * k_BHCK)
    U = _einsum("bhij,bhjv->bhiv", T, beta_BHC[..., None] * v_BHCV)
    return _Factors(D, gamma, KK, QK, T, W, U)


def _unit_lower_inverse(A_BHCC: jax.Array) -> jax.Array:
    """A^-1 of unit lower-triangular matrices by blockwise doubling, matmuls only.

    Not lax.linalg.triangular_solve: on CPU that is a LAPACK custom call (jaxlib 0.10) that
    fans its batch out to XLA's intra-op thread pool and blocks on it, which deadlocks a
    data-parallel step when the other virtual devices hold every pool thread in the gradient
    all-reduce. The diagonal blocks' inverses double in size each round:
    [[A11, 0], [A21, A22]]^-1 = [[T11, 0], [-T22 A21 T11, T22]].
    """
    C = A_BHCC.shape[-1]
    Cp = 1 << (C - 1).bit_length()
    lead = A_BHCC.shape[:-2]
    if Cp != C:  # identity padding keeps the leading C x C block's inverse
        A_BHCC = jnp.broadcast_to(jnp.eye(Cp, dtype=A_BHCC.dtype), lead + (Cp, Cp)
                                  ).at[..., :C, :C].set(A_BHCC)
    T_BHMbb = jnp.ones(lead + (Cp, 1, 1), A_BHCC.dtype)  # the unit 1 x 1 blocks
    b = 1
    while b < Cp:
        M = Cp // (2 * b)
        diag_BHM22 = jnp.einsum("...mimj->...mij", A_BHCC.reshape(lead + (M, 2 * b, M, 2 * b)))
        T11, T22 = T_BHMbb[..., 0::2, :, :], T_BHMbb[..., 1::2, :, :]
        T21 = -_einsum("...ij,...jk->...ik", _einsum("...ij,...jk->...ik", T22,
                                                       diag_BHM22[..., b:, :b]), T11)
        T_BHMbb = jnp.concatenate([jnp.concatenate([T11, jnp.zeros_like(T11)], -1),
                                   jnp.concatenate([T21, T22], -1)], -2)
        b *= 2
    return T_BHMbb[..., 0, :C, :C]


def _chunk_forward(f: _Factors, q_BHCK, k_BHCK, S_BHKV):
    """Output of one chunk and the state leaving it."""
    u_BHCV = f.U - _einsum("bhck,bhkv->bhcv", f.W, S_BHKV)
    o_BHCV = (f.gamma[..., None] * _einsum("bhck,bhkv->bhcv", q_BHCK, S_BHKV)
              + _einsum("bhij,bhjv->bhiv", f.D * f.QK, u_BHCV))
    Kd_BHCK = f.D[..., -1, :, None] * k_BHCK   # k_j decayed to the chunk's end
    S_next = (f.gamma[..., -1, None, None] * S_BHKV
              + _einsum("bhck,bhcv->bhkv", Kd_BHCK, u_BHCV))
    return o_BHCV, S_next


def _chunk_backward(f: _Factors, q, k, v, beta, S, dS_next, do):
    """Cotangents of one chunk's inputs and entering state, given those of its outputs."""
    delta = f.D[..., -1, :]
    Kd = delta[..., None] * k
    P = f.D * f.QK
    u = f.U - _einsum("bhck,bhkv->bhcv", f.W, S)

    # Through u = U - W S, O = diag(gamma) Q S + P u and S' = gamma_C S + Kd^T u.
    du = _einsum("bhij,bhiv->bhjv", P, do) + _einsum("bhck,bhkv->bhcv", Kd, dS_next)
    dQg = _einsum("bhcv,bhkv->bhck", do, S)
    dS = (_einsum("bhck,bhcv->bhkv", f.gamma[..., None] * q, do)
          + f.gamma[..., -1, None, None] * dS_next
          - _einsum("bhck,bhcv->bhkv", f.W, du))
    dW = -_einsum("bhcv,bhkv->bhck", du, S)
    dP = _einsum("bhiv,bhjv->bhij", do, u)
    dKd = _einsum("bhcv,bhkv->bhck", u, dS_next)

    # Through P = D * QK, Qg = diag(gamma) Q, Kd = diag(D[C, :]) K.
    dPD = dP * f.D
    dq = f.gamma[..., None] * dQg + _einsum("bhij,bhjk->bhik", dPD, k)
    dk = _einsum("bhij,bhik->bhjk", dPD, q) + delta[..., None] * dKd
    dD = dP * f.QK
    dgamma = jnp.sum(q * dQg, -1)
    dgamma = dgamma.at[..., -1].add(jnp.sum(S * dS_next, axis=(-2, -1)))
    dD = dD.at[..., -1, :].add(jnp.sum(k * dKd, -1))

    # Through W = A^-1 X, U = A^-1 Y with X = diag(beta gamma) K, Y = diag(beta) V.
    dX = _einsum("bhji,bhjk->bhik", f.T, dW)
    dY = _einsum("bhji,bhjv->bhiv", f.T, du)
    dA = -(_einsum("bhik,bhjk->bhij", dX, f.W) + _einsum("bhiv,bhjv->bhij", dY, f.U))
    k_dX = jnp.sum(k * dX, -1)
    dk = dk + (beta * f.gamma)[..., None] * dX
    dv = beta[..., None] * dY
    dbeta = f.gamma * k_dX + jnp.sum(v * dY, -1)
    dgamma = dgamma + beta * k_dX

    # Through A = I + diag(beta) (L * KK), L = strict_lower(D).
    L = jnp.tril(f.D, -1)
    dbeta = dbeta + jnp.sum(dA * L * f.KK, -1)
    dKK = beta[..., :, None] * dA * L
    dk = dk + _einsum("bhij,bhjk->bhik", dKK, k) + _einsum("bhji,bhjk->bhik", dKK, k)
    dD = dD + jnp.tril(beta[..., :, None] * dA * f.KK, -1)

    # Through D_ij = exp(G_i - G_j) and gamma_i = exp(G_i), each on its support.
    E = dD * f.D
    dG = jnp.sum(E, -1) - jnp.sum(E, -2) + dgamma * f.gamma
    return dS, (dq, dk, dv, dbeta, dG)


def _forward_scan(q, k, v, beta, G, seg_NBC, seg_prev_NB, S0_BHKV):
    def step(S_BHKV, chunk):
        q_n, k_n, v_n, beta_n, G_n, seg_n, seg_prev_n = chunk
        f = _factors(q_n, k_n, v_n, beta_n, G_n, seg_n, seg_prev_n)
        o_n, S_next = _chunk_forward(f, q_n, k_n, S_BHKV)
        return S_next, (o_n, S_BHKV)

    final_BHKV, (o_NBHCV, S_NBHKV) = jax.lax.scan(
        step, S0_BHKV, (q, k, v, beta, G, seg_NBC, seg_prev_NB))
    return o_NBHCV, final_BHKV, S_NBHKV


@jax.custom_vjp
def _chunked(q, k, v, beta, G, seg_NBC, seg_prev_NB, S0_BHKV):
    o_NBHCV, final_BHKV, _ = _forward_scan(q, k, v, beta, G, seg_NBC, seg_prev_NB, S0_BHKV)
    return o_NBHCV, final_BHKV


def _chunked_fwd(q, k, v, beta, G, seg_NBC, seg_prev_NB, S0_BHKV):
    o_NBHCV, final_BHKV, S_NBHKV = _forward_scan(q, k, v, beta, G, seg_NBC, seg_prev_NB, S0_BHKV)
    # S_NBHKV[n] is the state entering chunk n: the only per-chunk residual.
    return (o_NBHCV, final_BHKV), (q, k, v, beta, G, seg_NBC, seg_prev_NB, S_NBHKV)


def _chunked_bwd(residuals, cotangents):
    q, k, v, beta, G, seg_NBC, seg_prev_NB, S_NBHKV = residuals
    do_NBHCV, dfinal_BHKV = cotangents

    def step(dS_next, chunk):
        q_n, k_n, v_n, beta_n, G_n, seg_n, seg_prev_n, S_n, do_n = chunk
        f = _factors(q_n, k_n, v_n, beta_n, G_n, seg_n, seg_prev_n)
        return _chunk_backward(f, q_n, k_n, v_n, beta_n, S_n, dS_next, do_n)

    dS0_BHKV, (dq, dk, dv, dbeta, dG) = jax.lax.scan(
        step, dfinal_BHKV, (q, k, v, beta, G, seg_NBC, seg_prev_NB, S_NBHKV, do_NBHCV),
        reverse=True)
    return dq, dk, dv, dbeta, dG, None, None, dS0_BHKV


_chunked.defvjp(_chunked_fwd, _chunked_bwd)
