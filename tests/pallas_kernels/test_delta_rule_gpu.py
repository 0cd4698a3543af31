"""The GPU (Triton) kernels in interpret mode against the float64 reference and the scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.ops import delta_rule
from tests.numerics import relative_error
from tests.ops.cases import Case
from tests.ops.test_delta_rule import (assert_matches_float64_reference, reference_forward,
                                      reference_grads, rounded_inputs)
from tests.pallas_kernels.helpers import BF16_CASES, CASES, run, use_target

TARGET = "gpu"


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.id}-K{case.K}V{case.V}")
def test_pallas_matches_float64_reference(case, monkeypatch):
    o, final_state, grads = run(case, TARGET, monkeypatch)
    assert_matches_float64_reference(case, o, final_state, grads)


def test_pallas_matches_recurrent_backend(monkeypatch):
    case = CASES[4]
    o, final_state, grads = run(case, TARGET, monkeypatch)
    o_rec, final_rec, grads_rec = run(case, TARGET, monkeypatch, backend="recurrent")
    assert relative_error(o, o_rec) < 1e-5
    assert relative_error(final_state, final_rec) < 1e-5
    for name, grad in grads.items():
        assert relative_error(grad, grads_rec[name]) < 1e-4, name


@pytest.mark.parametrize("case", BF16_CASES, ids=lambda case: case.id)
def test_bfloat16_inputs_keep_float32_state(case, monkeypatch):
    o, final_state, grads = run(case, TARGET, monkeypatch, jnp.bfloat16)
    o_ref, final_ref = reference_forward(case, jnp.bfloat16)
    assert o.dtype == jnp.bfloat16 and final_state.dtype == jnp.float32
    assert all(g.dtype == jnp.bfloat16 for g in grads.values())
    assert relative_error(o, o_ref) < 2e-2
    assert relative_error(final_state, final_ref) < 2e-2
    grads_ref = reference_grads(case)
    for name, grad in grads.items():
        assert relative_error(grad, grads_ref[name]) < 5e-2, name


def test_output_at_t_does_not_depend_on_later_tokens(monkeypatch):
    case = Case(T=50, chunk_size=16, gate=True, segments=True, B=1)
    use_target(monkeypatch, TARGET)
    arrays, _, segment_ids = rounded_inputs(case, jnp.float32)
    t = 21  # mid-chunk: later tokens of the same chunk must not leak either

    def o_t(arrays):
        o, _ = delta_rule(**arrays, segment_ids=segment_ids, backend="pallas", chunk_size=16)
        return jnp.sum(o[:, t])

    grads = jax.jit(jax.grad(o_t))(arrays)
    for name in ("q", "k", "v", "beta", "gate"):
        assert np.all(np.asarray(grads[name])[:, t + 1:] == 0.0), name
        assert np.any(np.asarray(grads[name])[:, : t + 1] != 0.0), name


def test_unjitted_call_matches_reference(monkeypatch):
    use_target(monkeypatch, TARGET)
    case = CASES[0]
    arrays, _, _ = rounded_inputs(case, jnp.float32)
    o, final_state = delta_rule(**arrays, return_final_state=True, backend="pallas")
    o_ref, final_ref = reference_forward(case, jnp.float32)
    assert relative_error(o, o_ref) < 1e-5
    assert relative_error(final_state, final_ref) < 1e-5
