"""An independent float64 delta rule: one token at a time, in transition-matrix form.

Written without the package's code: S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T, with
a_t = exp(g_t), and a_t = 0 where segment_ids changes. The NumPy loop gives reference values; the
same step under `lax.scan` in x64 gives reference gradients (a Python loop under jax costs a
compile per primitive and shape).
"""

import jax
import jax.numpy as jnp
import numpy as np


def _step(S, q_t, k_t, v_t, b_t, a_t, scale, xp):
    """One token for every [batch, head]: returns (S_t, o_t)."""
    eye = xp.eye(k_t.shape[-1])[None, None]
    b_t = b_t[..., None, None]
    transition = eye - b_t * k_t[..., :, None] * k_t[..., None, :]
    S = a_t[..., None, None] * (transition @ S) + b_t * k_t[..., :, None] * v_t[..., None, :]
    return S, xp.einsum("bhkv,bhk->bhv", S, scale * q_t)


def _carry_factors(gate, segment_ids, B, T, H):
    """a_t of the recurrence as [B, T, H] float64 (exp of the gate, 0 at segment starts)."""
    a = np.ones((B, T, H)) if gate is None else None
    same = np.ones((B, T))
    if segment_ids is not None:
        same[:, 1:] = segment_ids[:, 1:] == segment_ids[:, :-1]
    return a, same[:, :, None]


def delta_rule_reference(q, k, v, beta, gate=None, initial_state=None, segment_ids=None,
                         scale=None):
    """NumPy float64; returns (o [B,T,H,V], final state [B,H,K,V])."""
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    S = np.zeros((B, H, K, v.shape[-1])) if initial_state is None else initial_state
    a, same = _carry_factors(gate, segment_ids, B, T, H)
    a = np.exp(gate) * same if a is None else a * same
    outputs = []
    for t in range(T):
        S, o_t = _step(S, q[:, t], k[:, t], v[:, t], beta[:, t], a[:, t], scale, np)
        outputs.append(o_t)
    return np.stack(outputs, axis=1), S


def delta_rule_reference_jax(q, k, v, beta, gate=None, initial_state=None, segment_ids=None,
                             scale=None):
    """The same recurrence with jax.numpy, differentiable; call under jax.enable_x64."""
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    S = jnp.zeros((B, H, K, v.shape[-1])) if initial_state is None else initial_state
    a, same = _carry_factors(gate, segment_ids, B, T, H)
    a = jnp.exp(gate) * same if a is None else jnp.asarray(a * same)

    def step(S, xs):
        return _step(S, *xs, scale, jnp)

    time_major = lambda x: jnp.moveaxis(x, 1, 0)
    S, o_TBHV = jax.lax.scan(step, S, tuple(map(time_major, (q, k, v, beta, a))))
    return time_major(o_TBHV), S
