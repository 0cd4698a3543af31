"""Chunkwise-parallel delta rule (WY representation / UT transform), hand-written backward.

The derivation is in deltajax/ops/README.md. Per chunk of C tokens entering with state S [K, V],
with G the within-chunk cumulative log-gate and D[i, j] = exp(G_i - G_j) for j <= i in the same
segment (else 0), gamma_i = exp(G_i) while token i is still in the segment S belongs to:

    A  = I + diag(beta) (strict_lower(D) * K K^T)         unit lower triangular
    W  = A^-1 diag(beta * gamma) K,   U = A^-1 diag(beta) V
    u  = U - W S                                          what the chunk writes into the state
    O  = diag(gamma) Q S + (D * Q K^T) u
    S' = gamma_C S + (diag(D[C, :]) K)^T u

Everything but the S recurrence is independent across chunks and computed for all chunks at
once; one `lax.scan` carries S forward, and one carries dS backward. The backward keeps only the
inputs and the state entering each chunk, and recomputes the rest.
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
    """Returns (o_BTHV in the input dtype, final state_BHKV in float32)."""
    B, T, H, K = q_BTHK.shape
    V = v_BTHV.shape[-1]
    # A short sequence gets a smaller chunk rather than padding up to chunk_size.
    C = min(chunk_size, 1 << (T - 1).bit_length())
    N = -(-T // C)
    pad = N * C - T

    def to_chunks(x_BTH_):
        # Zero padding makes padded tokens no-ops: beta = k = v = 0 and g = 0.
        x = jnp.pad(x_BTH_.astype(jnp.float32), [(0, 0), (0, pad)] + [(0, 0)] * (x_BTH_.ndim - 2))
        x = x.reshape(B, N, C, *x.shape[2:])
        return jnp.moveaxis(x, 3, 1)  # [B, H, N, C, ...]

    q_BHNCK = to_chunks(q_BTHK) * scale
    k_BHNCK = to_chunks(k_BTHK)
    v_BHNCV = to_chunks(v_BTHV)
    beta_BHNC = to_chunks(beta_BTH)
    if gate_BTH is None:
        G_BHNC = jnp.zeros((B, H, N, C), jnp.float32)
    else:
        G_BHNC = jnp.cumsum(to_chunks(gate_BTH), axis=-1)

    if segment_ids_BT is None:
        seg_BNC = jnp.zeros((B, N, C), jnp.int32)
    else:
        seg_BNC = jnp.pad(segment_ids_BT, [(0, 0), (0, pad)], mode="edge").reshape(B, N, C)
    # Segment of the state entering each chunk: that of the previous token (token 0's for chunk 0).
    seg_prev_BN = jnp.concatenate([seg_BNC[:, :1, 0], seg_BNC[:, :-1, -1]], axis=1)

    if initial_state_BHKV is None:
        S0_BHKV = jnp.zeros((B, H, K, V), jnp.float32)
    else:
        S0_BHKV = initial_state_BHKV.astype(jnp.float32)

    o_BHNCV, final_BHKV = _chunked(q_BHNCK, k_BHNCK, v_BHNCV, beta_BHNC, G_BHNC,
                                   seg_BNC, seg_prev_BN, S0_BHKV)
    o_BTHV = jnp.moveaxis(o_BHNCV, 1, 3).reshape(B, N * C, H, V)[:, :T]
    return o_BTHV.astype(v_BTHV.dtype), final_BHKV


class _Factors(NamedTuple):
    """State-independent quantities of every chunk (all float32, [B, H, N, ...])."""
    D: jax.Array        # [C, C] within-segment decay from j to i (lower triangular)
    gamma: jax.Array    # [C] decay of the entering state up to token i (0 after a reset)
    KK: jax.Array       # [C, C] K K^T
    QK: jax.Array       # [C, C] Q K^T
    T: jax.Array        # [C, C] A^-1
    W: jax.Array        # [C, K]
    U: jax.Array        # [C, V]


def _factors(q, k, v, beta, G, seg_BNC, seg_prev_BN) -> _Factors:
    C = q.shape[-2]
    causal_CC = jnp.tril(jnp.ones((C, C), bool))
    same_segment_BNCC = seg_BNC[..., :, None] == seg_BNC[..., None, :]
    mask_B1NCC = (causal_CC[None, None] & same_segment_BNCC)[:, None]
    G_diff = G[..., :, None] - G[..., None, :]
    # Masked before exp: G_i - G_j > 0 above the diagonal could overflow.
    D = jnp.where(mask_B1NCC, jnp.exp(jnp.where(mask_B1NCC, G_diff, 0.0)), 0.0)
    in_entering_segment_B1NC = (seg_BNC == seg_prev_BN[..., None])[:, None]
    gamma = jnp.exp(G) * in_entering_segment_B1NC

    KK = _einsum("...ik,...jk->...ij", k, k)
    QK = _einsum("...ik,...jk->...ij", q, k)
    eye = jnp.broadcast_to(jnp.eye(C, dtype=jnp.float32), D.shape)
    A = eye + beta[..., :, None] * jnp.tril(D, -1) * KK
    T = jax.lax.linalg.triangular_solve(A, eye, left_side=True, lower=True, unit_diagonal=True)
    W = _einsum("...ij,...jk->...ik", T, (beta * gamma)[..., None] * k)
    U = _einsum("...ij,...jv->...iv", T, beta[..., None] * v)
    return _Factors(D, gamma, KK, QK, T, W, U)


def _forward(q, k, v, beta, G, seg_BNC, seg_prev_BN, S0_BHKV):
    f = _factors(q, k, v, beta, G, seg_BNC, seg_prev_BN)
    Kd_BHNCK = f.D[..., -1, :, None] * k   # k_j decayed to the chunk's end
    gamma_last_BHN = f.gamma[..., -1]

    def step(S_BHKV, xs):
        W_BHCK, U_BHCV, Kd_BHCK, gamma_last_BH = xs
        u_BHCV = U_BHCV - _einsum("bhck,bhkv->bhcv", W_BHCK, S_BHKV)
        S_next = gamma_last_BH[..., None, None] * S_BHKV + _einsum("bhck,bhcv->bhkv", Kd_BHCK, u_BHCV)
        return S_next, S_BHKV

    chunk_major = lambda x: jnp.moveaxis(x, 2, 0)
    final_BHKV, S_NBHKV = jax.lax.scan(
        step, S0_BHKV, (chunk_major(f.W), chunk_major(f.U), chunk_major(Kd_BHNCK),
                        chunk_major(gamma_last_BHN)))
    S_BHNKV = jnp.moveaxis(S_NBHKV, 0, 2)   # state entering each chunk

    u_BHNCV = f.U - _einsum("bhnck,bhnkv->bhncv", f.W, S_BHNKV)
    o_BHNCV = (f.gamma[..., None] * _einsum("bhnck,bhnkv->bhncv", q, S_BHNKV)
               + _einsum("bhnij,bhnjv->bhniv", f.D * f.QK, u_BHNCV))
    return o_BHNCV, final_BHKV, S_BHNKV


@jax.custom_vjp
def _chunked(q, k, v, beta, G, seg_BNC, seg_prev_BN, S0_BHKV):
    o_BHNCV, final_BHKV, _ = _forward(q, k, v, beta, G, seg_BNC, seg_prev_BN, S0_BHKV)
    return o_BHNCV, final_BHKV


def _chunked_fwd(q, k, v, beta, G, seg_BNC, seg_prev_BN, S0_BHKV):
    o_BHNCV, final_BHKV, S_BHNKV = _forward(q, k, v, beta, G, seg_BNC, seg_prev_BN, S0_BHKV)
    return (o_BHNCV, final_BHKV), (q, k, v, beta, G, seg_BNC, seg_prev_BN, S_BHNKV)


def _chunked_bwd(residuals, cotangents):
    q, k, v, beta, G, seg_BNC, seg_prev_BN, S_BHNKV = residuals
    do_BHNCV, dfinal_BHKV = cotangents
    f = _factors(q, k, v, beta, G, seg_BNC, seg_prev_BN)
    delta = f.D[..., -1, :]
    Kd = delta[..., None] * k
    P = f.D * f.QK

    # Backward over chunks: S_{n+1} = gamma_C S_n + Kd^T (U - W S_n) and O_n = diag(gamma) Q S_n + P u_n
    # give dS_n = gamma_C dS_{n+1} - W^T Kd dS_{n+1} + (diag(gamma) Q)^T dO_n - W^T P^T dO_n.
    PTdo = _einsum("bhnij,bhniv->bhnjv", P, do_BHNCV)
    R_BHNKV = (_einsum("bhnck,bhncv->bhnkv", f.gamma[..., None] * q, do_BHNCV)
               - _einsum("bhnck,bhncv->bhnkv", f.W, PTdo))

    def step(dS_next_BHKV, xs):
        W_BHCK, Kd_BHCK, gamma_last_BH, R_BHKV = xs
        dS_BHKV = (gamma_last_BH[..., None, None] * dS_next_BHKV + R_BHKV
                   - _einsum("bhck,bhcv->bhkv", W_BHCK,
                             _einsum("bhck,bhkv->bhcv", Kd_BHCK, dS_next_BHKV)))
        return dS_BHKV, dS_next_BHKV

    chunk_major = lambda x: jnp.moveaxis(x, 2, 0)
    dS0_BHKV, dS_end_NBHKV = jax.lax.scan(
        step, dfinal_BHKV,
        (chunk_major(f.W), chunk_major(Kd), chunk_major(f.gamma[..., -1]), chunk_major(R_BHNKV)),
        reverse=True)
    dS_end = jnp.moveaxis(dS_end_NBHKV, 0, 2)   # cotangent of the state leaving each chunk
    S = S_BHNKV

    # Cotangents of the chunk's state-independent factors.
    u = f.U - _einsum("bhnck,bhnkv->bhncv", f.W, S)
    du = PTdo + _einsum("bhnck,bhnkv->bhncv", Kd, dS_end)
    dW = -_einsum("bhncv,bhnkv->bhnck", du, S)
    dQg = _einsum("bhncv,bhnkv->bhnck", do_BHNCV, S)
    dP = _einsum("bhniv,bhnjv->bhnij", do_BHNCV, u)
    dKd = _einsum("bhncv,bhnkv->bhnck", u, dS_end)

    # P = D * QK, Qg = diag(gamma) Q, Kd = diag(delta) K.
    dPD = dP * f.D
    dq = f.gamma[..., None] * dQg + _einsum("bhnij,bhnjk->bhnik", dPD, k)
    dk = _einsum("bhnij,bhnik->bhnjk", dPD, q) + delta[..., None] * dKd
    dD = dP * f.QK
    dgamma = jnp.sum(q * dQg, -1)
    dgamma = dgamma.at[..., -1].add(jnp.sum(S * dS_end, axis=(-2, -1)))
    dD = dD.at[..., -1, :].add(jnp.sum(k * dKd, -1))

    # W = A^-1 X, U = A^-1 Y with X = diag(beta gamma) K, Y = diag(beta) V.
    dX = _einsum("bhnji,bhnjk->bhnik", f.T, dW)
    dY = _einsum("bhnji,bhnjv->bhniv", f.T, du)
    dA = -(_einsum("bhnik,bhnjk->bhnij", dX, f.W) + _einsum("bhniv,bhnjv->bhnij", dY, f.U))
    k_dX = jnp.sum(k * dX, -1)
    dk = dk + (beta * f.gamma)[..., None] * dX
    dv = beta[..., None] * dY
    dbeta = f.gamma * k_dX + jnp.sum(v * dY, -1)
    dgamma = dgamma + beta * k_dX

    # A = I + diag(beta) (L * KK), L = strict_lower(D).
    L = jnp.tril(f.D, -1)
    dbeta = dbeta + jnp.sum(dA * L * f.KK, -1)
    dKK = beta[..., :, None] * dA * L
    dk = dk + _einsum("bhnij,bhnjk->bhnik", dKK, k) + _einsum("bhnji,bhnjk->bhnik", dKK, k)
    dD = dD + jnp.tril(beta[..., :, None] * dA * f.KK, -1)

    # D_ij = exp(G_i - G_j) on its support, gamma_i = exp(G_i) on its support.
    E = dD * f.D
    dG = jnp.sum(E, -1) - jnp.sum(E, -2) + dgamma * f.gamma
    return dq, dk, dv, dbeta, dG, None, None, dS0_BHKV


_chunked.defvjp(_chunked_fwd, _chunked_bwd)
