"""The kernel tests' cases and their one jitted call: value, forward-only value and VJP at once.

The kernels are called through deltajax.ops.pallas.delta_rule_pallas with an explicit target
and interpret=True, so a test picks its kernel set without the environment. Interpret mode is
slow to compile, so each case compiles one function (primal, forward-only primal and VJP
together) and tests of the same case share it through a module-scoped fixture.
"""

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from deltajax.ops.pallas import delta_rule_pallas
from pallas_kernels.block_sizes import BlockSizes
from tests.ops.cases import Case, cotangents
from tests.ops.test_delta_rule import rounded_inputs

# Every feature at once, ragged T (50 = 3 chunks + 2) and head dims that need padding (K=24 ->
# 32, V=40 -> 64 on GPU; 128 lanes on TPU).
FULL = Case(T=50, chunk_size=16, gate=True, initial_state=True, segments=True, beta_max=2.0, B=1,
            K=24, V=40)
# Raw (unnormalised) keys with small beta: an ill-conditioned UT solve; chunk 32.
RAW_K = Case(T=40, chunk_size=32, gate=True, normalize_k=False, beta_max=0.1, B=1)


def pallas_op(arrays, segment_ids, *, target, chunk_size, block_sizes=None):
    """delta_rule(backend="pallas")'s function on the op's [B, T, H, D] arrays."""
    return delta_rule_pallas(
        arrays["q"], arrays["k"], arrays["v"], arrays["beta"],
        scale=arrays["q"].shape[-1] ** -0.5, chunk_size=chunk_size, target=target,
        interpret=True, block_sizes=block_sizes, gate_BTH=arrays.get("gate"),
        initial_state_BHKV=arrays.get("initial_state"), segment_ids_BT=segment_ids)


class Outputs(NamedTuple):
    o: jax.Array
    final_state: jax.Array
    grads: dict
    o_forward_only: jax.Array      # not differentiated: the kernels write no per-chunk states
    final_forward_only: jax.Array


# The interpreted kernels are large XLA:CPU programs; its backend optimisations (LLVM) take
# about a third of their compile time and are worth nothing in a test of values.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.partial(jax.jit, static_argnames=("target", "chunk_size", "block_sizes"),
                   compiler_options=FAST_COMPILE)
def forward_and_vjp(arrays, segment_ids, do, dfinal, *, target, chunk_size, block_sizes):
    op = functools.partial(pallas_op, segment_ids=segment_ids, target=target,
                           chunk_size=chunk_size, block_sizes=block_sizes)
    (o, final_state), vjp = jax.vjp(op, arrays)
    (grads,) = vjp((do.astype(o.dtype), dfinal))
    return Outputs(o, final_state, grads, *op(arrays))


def run(case: Case, target: str, dtype=jnp.float32, block_sizes: Optional[BlockSizes] = None,
        do=None, dfinal=None) -> Outputs:
    """One call of the case's compiled function; cotangents default to the case's random ones."""
    arrays, _, segment_ids = rounded_inputs(case, dtype)
    do_rand, dfinal_rand = cotangents(case)
    do = do_rand if do is None else do
    dfinal = dfinal_rand if dfinal is None else dfinal
    segment_ids = None if segment_ids is None else jnp.asarray(segment_ids)
    return forward_and_vjp(arrays, segment_ids, jnp.asarray(do, jnp.float32),
                           jnp.asarray(dfinal, jnp.float32), target=target,
                           chunk_size=case.chunk_size, block_sizes=block_sizes)


@functools.cache
def outputs(case: Case, target: str, dtype=jnp.float32) -> Outputs:
    """run() with the default tiles and random cotangents, once per session."""
    return run(case, target, dtype)


def one_hot_cotangents(case: Case, t: int):
    """(do, dfinal) that pick the output at time t: its VJP is the gradient of sum(o[:, t])."""
    do = np.zeros((case.B, case.T, case.H, case.V), np.float32)
    do[:, t] = 1.0
    return do, np.zeros((case.B, case.H, case.K, case.V), np.float32)


def assert_causal(grads: dict, t: int):
    """Gradients of the output at t: exactly zero after t, somewhere nonzero up to t."""
    for name in ("q", "k", "v", "beta", "gate"):
        assert np.all(np.asarray(grads[name])[:, t + 1:] == 0.0), name
        assert np.any(np.asarray(grads[name])[:, : t + 1] != 0.0), name
