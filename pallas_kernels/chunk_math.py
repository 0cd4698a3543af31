"""Per-chunk math of the chunked delta rule on tiles already loaded from refs.

Shared by the GPU (Triton) and TPU (Mosaic) kernels, so it uses only what both lower: 2-D
arrays, 2-D dots, iota masks, row/column reductions with keepdims and 2-D transposes. Per-token
scalars come as columns [C, 1] and rows [1, C] (both layouts are loaded; no in-kernel reshape).
The algorithm and its backward are derived in deltajax/ops/README.md; with S the state entering
a chunk, D the within-segment decay and gamma the decay of S:

    A = I + diag(beta) strict_lower(D * K K^T),  T = A^-1,  W = T diag(beta gamma) K,
    U = T diag(beta) V,  u = U - W S,  O = diag(gamma) Q S + (D * Q K^T) u,
    S' = gamma_C S + (diag(delta) K)^T u,  delta = D[C, :]
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


def _precision(dtype):
    # f32 dots must stay f32 (TF32 or one bf16 pass would break the f32 tolerances).
    return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None


def _dot(a, b, contracting, dtype):
    return jax.lax.dot_general(
        a.astype(dtype), b.astype(dtype), (contracting, ((), ())),
        precision=_precision(dtype), preferred_element_type=jnp.float32)


def mm(a, b, dtype=jnp.float32):
    """a @ b with f32 accumulation; operands rounded to dtype (bf16 runs on the tensor cores)."""
    return _dot(a, b, ((1,), (0,)), dtype)


def mm_nt(a, b, dtype=jnp.float32):
    """a @ b^T."""
    return _dot(a, b, ((1,), (1,)), dtype)


def mm_tn(a, b, dtype=jnp.float32):
    """a^T @ b."""
    return _dot(a, b, ((0,), (0,)), dtype)


def _total(x_RC):
    """Sum of all entries as [1, 1] (no rank-0 values in kernels)."""
    return jnp.sum(jnp.sum(x_RC, axis=1, keepdims=True), axis=0, keepdims=True)


def _last(x_C1):
    """Entry C-1 of a column, as [1, 1] (tiles cannot be sliced in Triton)."""
    rows = jax.lax.broadcasted_iota(jnp.int32, x_C1.shape, 0)
    return _total(jnp.where(rows == x_C1.shape[0] - 1, x_C1, 0.0))


class Decay(NamedTuple):
    D_CC: jax.Array       # exp(G_i - G_j) for j <= i in the same segment, else 0
    gamma_C1: jax.Array   # exp(G_i) while token i is in the segment of the entering state
    delta_C1: jax.Array   # D[C-1, j], as a column
    gamma_last_11: jax.Array


def decay_masks(G_C1, G_1C, c_C1, c_1C) -> Decay:
    """Masks from the within-chunk cumulative log-gate G and the resets-so-far count c."""
    C = G_C1.shape[0]
    rows = jax.lax.broadcasted_iota(jnp.int32, (C, C), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (C, C), 1)
    support = (rows >= cols) & (c_C1 == c_1C)
    # Masked before exp: above the diagonal G_i - G_j > 0 could overflow.
    D_CC = jnp.where(support, jnp.exp(jnp.where(support, G_C1 - G_1C, 0.0)), 0.0)
    gamma_C1 = jnp.where(c_C1 == 0.0, jnp.exp(G_C1), 0.0)
    G_last, c_last = _last(G_C1), _last(c_C1)
    same_C1 = c_C1 == c_last
    delta_C1 = jnp.where(same_C1, jnp.exp(jnp.where(same_C1, G_last - G_C1, 0.0)), 0.0)
    gamma_last = jnp.where(c_last == 0.0, jnp.exp(G_last), 0.0)
    return Decay(D_CC, gamma_C1, delta_C1, gamma_last)


def invert_unit_lower(L_CC):
    """(I + L)^-1 for strictly lower L, by forward substitution one row at a time.

    Forward substitution is exactly as stable as the scan it replaces; the product formula
    (I - L)(I + L^2)(I + L^4)... needs no loop but loses accuracy when beta k_i.k_j is large.
    """
    C = L_CC.shape[0]
    rows = jax.lax.broadcasted_iota(jnp.int32, (C, C), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (C, C), 1)
    eye = jnp.where(rows == cols, 1.0, 0.0).astype(jnp.float32)
    Lt_CC = L_CC.T

    def row(i, T_CC):
        l_C1 = jnp.sum(jnp.where(cols == i, Lt_CC, 0.0), axis=1, keepdims=True)   # L[i, :]^T
        new_1C = (jnp.sum(jnp.where(rows == i, eye, 0.0), axis=0, keepdims=True)
                  - jnp.sum(l_C1 * T_CC, axis=0, keepdims=True))
        return jnp.where(rows == i, new_1C, T_CC)

    return jax.lax.fori_loop(1, C, row, eye)


def invert_unit_lower_doubling(L_CC, precision=jax.lax.Precision.HIGHEST):
    """(I + L)^-1 for strictly lower L by doubling the inverted diagonal blocks, with dots.

    With T the inverse of the diagonal s-blocks, the 2s-blocks' inverse is T - T M T, M the
    sub-diagonal s-blocks of L inside each 2s-block: the blocked triangular inverse
    [[T11, 0], [-T22 L21 T11, T22]], as stable as forward substitution. log2(C) - 1 rounds of two
    [C, C] dots instead of C elementwise row steps: with Precision.HIGH on GPU they run on the
    tensor cores in TF32 (~1e-4 relative, enough under bf16 inputs); Mosaic takes HIGHEST.
    """
    C = L_CC.shape[0]
    rows = jax.lax.broadcasted_iota(jnp.int32, (C, C), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (C, C), 1)
    eye = jnp.where(rows == cols, 1.0, 0.0).astype(jnp.float32)
    dot = lambda a, b: jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())),
                                           precision=precision,
                                           preferred_element_type=jnp.float32)
    # Block indices by shifts: Mosaic's integer floor-division lowering needs a real chip.
    block = lambda x, log2_size: jax.lax.shift_right_logical(x, jnp.full_like(x, log2_size))
    T_CC = eye - jnp.where(block(rows, 1) == block(cols, 1), L_CC, 0.0)   # the 2x2 blocks
    for log2_s in range(1, C.bit_length() - 1):
        in_pair = block(rows, log2_s + 1) == block(cols, log2_s + 1)
        M_CC = jnp.where(in_pair & (block(rows, log2_s) != block(cols, log2_s)), L_CC, 0.0)
        T_CC = T_CC - dot(dot(T_CC, M_CC), T_CC)
    return T_CC


class Factors(NamedTuple):
    decay: Decay
    KK_CC: jax.Array
    T_CC: jax.Array
    W_CK: jax.Array
    U_CV: jax.Array


def factors(k_CK, v_CV, beta_C1, decay: Decay, dtype, solve_precision) -> Factors:
    """The state-independent WY factors of one chunk; solve_precision: that of the bf16 solve."""
    C = k_CK.shape[0]
    rows = jax.lax.broadcasted_iota(jnp.int32, (C, C), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (C, C), 1)
    KK_CC = mm_nt(k_CK, k_CK, dtype)
    L_CC = jnp.where(rows > cols, beta_C1 * decay.D_CC * KK_CC, 0.0)
    # f32 inputs keep the exact f32 row-by-row solve; bf16 inputs take the dots.
    if dtype == jnp.float32:
        T_CC = invert_unit_lower(L_CC)
    else:
        T_CC = invert_unit_lower_doubling(L_CC, solve_precision)
    W_CK = mm(T_CC, (beta_C1 * decay.gamma_C1) * k_CK)
    U_CV = mm(T_CC, beta_C1 * v_CV)
    return Factors(decay, KK_CC, T_CC, W_CK, U_CV)


def chunk_forward(q_CK, k_CK, W_CK, U_CV, S_KV, decay: Decay, dtype):
    """(o_CV, S_next_KV) of one chunk; V may be a slice of the value columns."""
    u_CV = U_CV - mm(W_CK, S_KV, dtype)
    P_CC = decay.D_CC * mm_nt(q_CK, k_CK, dtype)
    o_CV = decay.gamma_C1 * mm(q_CK, S_KV, dtype) + mm(P_CC, u_CV, dtype)
    S_next_KV = decay.gamma_last_11 * S_KV + mm_tn(decay.delta_C1 * k_CK, u_CV, dtype)
    return o_CV, S_next_KV


def chunk_state_grad(q_CK, k_CK, W_CK, do_CV, dS_next_KV, decay: Decay, dtype):
    """dS entering a chunk from dS leaving it: the only sequential part of the backward."""
    P_CC = decay.D_CC * mm_nt(q_CK, k_CK, dtype)
    du_CV = mm_tn(P_CC, do_CV, dtype) + mm(decay.delta_C1 * k_CK, dS_next_KV, dtype)
    return (mm_tn(decay.gamma_C1 * q_CK, do_CV, dtype) + decay.gamma_last_11 * dS_next_KV
            - mm_tn(W_CK, du_CV, dtype))


def _rowsum(x_CC):
    return jnp.sum(x_CC, axis=1, keepdims=True)


def chunk_backward(q_CK, k_CK, v_CV, beta_C1, f: Factors, S_KV, dS_next_KV, do_CV, dtype):
    """Cotangents (dq_CK, dk_CK, dv_CV, dbeta_C1, dG_C1) of one chunk's inputs."""
    D, gamma, delta = f.decay.D_CC, f.decay.gamma_C1, f.decay.delta_C1
    C = D.shape[0]
    rows = jax.lax.broadcasted_iota(jnp.int32, (C, C), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (C, C), 1)
    is_last_C1 = jax.lax.broadcasted_iota(jnp.int32, (C, 1), 0) == C - 1

    QK = mm_nt(q_CK, k_CK, dtype)
    P = D * QK
    Kd = delta * k_CK
    u = f.U_CV - mm(f.W_CK, S_KV, dtype)

    # Through u = U - W S, O = diag(gamma) Q S + P u and S' = gamma_C S + Kd^T u.
    du = mm_tn(P, do_CV, dtype) + mm(Kd, dS_next_KV, dtype)
    dQg = mm_nt(do_CV, S_KV, dtype)
    dW = -mm_nt(du, S_KV, dtype)
    dP = mm_nt(do_CV, u, dtype)
    dKd = mm_nt(u, dS_next_KV, dtype)

    # Through P = D * QK, Qg = diag(gamma) Q, Kd = diag(delta) K.
    dPD = dP * D
    dq = gamma * dQg + mm(dPD, k_CK, dtype)
    dk = mm_tn(dPD, q_CK, dtype) + delta * dKd
    dD = dP * QK
    dgamma = _rowsum(q_CK * dQg)
    dgamma_last = _total(S_KV * dS_next_KV)
    ddelta = _rowsum(k_CK * dKd)

    # Through W = T X, U = T Y with X = diag(beta gamma) K, Y = diag(beta) V (f32: T is ill-scaled).
    dX = mm_tn(f.T_CC, dW)
    dY = mm_tn(f.T_CC, du)
    dA = -(mm_nt(dX, f.W_CK) + mm_nt(dY, f.U_CV))
    k_dX = _rowsum(k_CK * dX)
    dk = dk + (beta_C1 * gamma) * dX
    dv = beta_C1 * dY
    dbeta = gamma * k_dX + _rowsum(v_CV * dY)
    dgamma = dgamma + beta_C1 * k_dX

    # Through A = I + diag(beta) (L * KK), L = strict_lower(D).
    strict = rows > cols
    L = jnp.where(strict, D, 0.0)
    dbeta = dbeta + _rowsum(dA * L * f.KK_CC)
    dKK = beta_C1 * dA * L
    dk = dk + mm(dKK, k_CK, dtype) + mm_tn(dKK, k_CK, dtype)
    dD = dD + jnp.where(strict, beta_C1 * dA * f.KK_CC, 0.0)

    # D_ij = exp(G_i - G_j), gamma_i = exp(G_i), delta_j = exp(G_C - G_j), each on its support.
    E = dD * D
    e_delta = ddelta * delta
    dG = (_rowsum(E) - _rowsum(E.T) + dgamma * gamma - e_delta
          + jnp.where(is_last_C1, _total(e_delta) + dgamma_last * f.decay.gamma_last_11, 0.0))
    return dq, dk, dv, dbeta, dG
