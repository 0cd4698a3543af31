"""Running backend="pallas" on one kernel set, and the cases the kernel tests share."""

import functools

import jax
import jax.numpy as jnp
import pytest

from deltajax.ops import delta_rule
from deltajax.ops.backend import PALLAS_TARGET_ENV as TARGET_ENV
from deltajax.ops.backend import pallas_target
from tests.ops.cases import Case, cotangents
from tests.ops.test_delta_rule import rounded_inputs

# Small enough for interpret mode; every feature, ragged T, and head dims that need padding
# (V=72 pads to 128: two value blocks in the GPU state passes).
CASES = [
    Case(T=7, chunk_size=16, gate=True, B=1),
    Case(T=64, chunk_size=16, gate=True, initial_state=True, B=1),
    Case(T=100, chunk_size=32, segments=True, B=1),
    Case(T=50, chunk_size=16, gate=True, normalize_k=False, beta_max=0.1, B=1),
    Case(T=70, chunk_size=16, gate=True, initial_state=True, segments=True, beta_max=2.0),
    Case(T=40, chunk_size=16, gate=True, initial_state=True, beta_max=2.0, B=1, K=24, V=72),
]
BF16_CASES = [Case(T=70, chunk_size=32, gate=True, initial_state=True, segments=True,
                   beta_max=2.0, B=1)]


@functools.partial(jax.jit, static_argnames=("backend", "chunk_size", "target"))
def forward_and_vjp(arrays, segment_ids, do, dfinal, *, backend, chunk_size, target):
    # target keys the jit cache: the kernel set is picked at trace time from the environment.
    assert pallas_target(jax.default_backend())[0] == target
    def op(arrays):
        return delta_rule(**arrays, segment_ids=segment_ids, return_final_state=True,
                          backend=backend, chunk_size=chunk_size)
    (o, final_state), vjp = jax.vjp(op, arrays)
    (grads,) = vjp((do.astype(o.dtype), dfinal))
    return o, final_state, grads


def use_target(monkeypatch, target: str):
    """Selects the kernel set; skips where it cannot run (the other kernel set on a GPU/TPU)."""
    monkeypatch.setenv(TARGET_ENV, target)
    if pallas_target(jax.default_backend())[0] != target:
        pytest.skip(f"the {target} kernels run on CPU (interpreted) or on a {target} only")


def run(case: Case, target: str, monkeypatch, dtype=jnp.float32, backend="pallas"):
    """(o, final_state, grads) of one jitted call with the kernels of target ("gpu" | "tpu")."""
    use_target(monkeypatch, target)
    arrays, _, segment_ids = rounded_inputs(case, dtype)
    do, dfinal = cotangents(case)
    return forward_and_vjp(arrays, segment_ids, jnp.asarray(do, jnp.float32),
                           jnp.asarray(dfinal, jnp.float32), backend=backend,
                           chunk_size=case.chunk_size, target=target)
