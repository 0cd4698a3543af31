"""The chunked delta rule as a `custom_vjp` over Pallas kernels, for either target.

Forward: `prepare` (parallel UT solve) -> the target's forward state pass (sequential over
chunks; writes o, the state entering each chunk and the final state). Backward: `prepare` again
(recomputing W, U is cheaper than keeping them) -> the target's reverse dS pass (writes the
cotangent of the state leaving each chunk and dS0) -> `chunk_grads` (parallel, all per-chunk
cotangents). Residuals: the inputs and the [N, K, V] states, as in deltajax/ops/chunked.py.
"""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels import chunk_kernels


class StatePasses(NamedTuple):
    """The target-specific sequential kernels and the pallas_call kwargs of the parallel ones.

    forward(q, k, W, U, tok, S0, *, C, save_states) -> (o, states_BHNKV or None, final_BHKV)
    backward(q, k, W, do, tok, dfinal, *, C) -> (dstates_BHNKV, dS0_BHKV)
    """
    forward: Callable
    backward: Callable
    parallel_params: dict
    solve_precision: jax.lax.Precision   # of the UT solve's dots under bf16 inputs
    block_v: Callable                    # V -> value columns per chunk_grads program


def build(passes: StatePasses):
    """f(q, k, v, beta, G, c, S0, C) -> (o, final); see delta_rule_gpu.delta_rule_chunked."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
    def op(q, k, v, beta, G, c, S0, C):
        o, _, final = forward(q, k, v, beta, G, c, S0, C, save_states=False)
        return o, final

    def forward(q, k, v, beta, G, c, S0, C, *, save_states):
        tok = chunk_kernels.token_scalars(beta, G, c, C)
        W, U = chunk_kernels.prepare(k, v, tok, C=C, call_params=passes.parallel_params,
                                     solve_precision=passes.solve_precision)
        return passes.forward(q, k, W, U, tok, S0, C=C, save_states=save_states)

    def fwd(q, k, v, beta, G, c, S0, C):
        # Only a differentiated call writes the per-chunk states: they are the residuals.
        o, states, final = forward(q, k, v, beta, G, c, S0, C, save_states=True)
        return (o, final), (q, k, v, beta, G, c, states)

    def bwd(C, residuals, cotangents):
        q, k, v, beta, G, c, states = residuals
        do, dfinal = cotangents
        tok = chunk_kernels.token_scalars(beta, G, c, C)
        W, _ = chunk_kernels.prepare(k, v, tok, C=C, call_params=passes.parallel_params,
                                     solve_precision=passes.solve_precision)
        dstates, dS0 = passes.backward(q, k, W, do, tok, dfinal.astype(jnp.float32), C=C)
        dq, dk, dv, dbeta, dG = chunk_kernels.chunk_grads(
            q, k, v, tok, states, dstates, do, C=C, call_params=passes.parallel_params,
            solve_precision=passes.solve_precision, block_v=passes.block_v(v.shape[-1]))
        return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
                dbeta[..., 0].astype(beta.dtype), dG[..., 0].astype(G.dtype), jnp.zeros_like(c),
                dS0)

    op.defvjp(fwd, bwd)
    return op


def check_layout(q, k, v, beta, G, c, S0, C, *, min_chunk: int):
    """Raises ValueError naming the argument when the kernel layout is not met."""
    BH, Tp, K = q.shape
    V = v.shape[-1]
    if C < min_chunk or C & (C - 1):
        raise ValueError(f"chunk_size must be a power of two >= {min_chunk}, got {C}")
    if Tp % C:
        raise ValueError(f"q must have a time length that is a multiple of chunk_size={C}, "
                         f"got shape {q.shape}")
    for name, x, shape in (("k", k, (BH, Tp, K)), ("v", v, (BH, Tp, V)), ("beta", beta, (BH, Tp)),
                           ("G", G, (BH, Tp)), ("c", c, (BH, Tp)), ("S0", S0, (BH, K, V))):
        if tuple(x.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
