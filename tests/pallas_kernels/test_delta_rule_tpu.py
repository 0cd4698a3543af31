"""The TPU (Mosaic) kernels in TPU interpret mode against the float64 reference.

TPU interpret mode raises on out-of-bounds reads and fills unwritten memory with NaN, so a wrong
index map or a state read before it is written fails here instead of on the chip.
"""

import jax.numpy as jnp
import pytest

from deltajax.ops import delta_rule
from tests.numerics import relative_error
from tests.ops.test_delta_rule import (assert_matches_float64_reference, reference_forward,
                                      rounded_inputs)
from tests.pallas_kernels.helpers import BF16_CASES, CASES, run, use_target

TARGET = "tpu"


@pytest.mark.parametrize("case", [CASES[0], CASES[4], CASES[5]],
                         ids=lambda case: f"{case.id}-K{case.K}V{case.V}")
def test_pallas_matches_float64_reference(case, monkeypatch):
    o, final_state, grads = run(case, TARGET, monkeypatch)
    assert_matches_float64_reference(case, o, final_state, grads)


@pytest.mark.parametrize("case", BF16_CASES, ids=lambda case: case.id)
def test_bfloat16_inputs_keep_float32_state(case, monkeypatch):
    o, final_state, grads = run(case, TARGET, monkeypatch, jnp.bfloat16)
    o_ref, final_ref = reference_forward(case, jnp.bfloat16)
    assert o.dtype == jnp.bfloat16 and final_state.dtype == jnp.float32
    assert all(g.dtype == jnp.bfloat16 for g in grads.values())
    assert relative_error(o, o_ref) < 2e-2
    assert relative_error(final_state, final_ref) < 2e-2


def test_forward_only_call_matches_reference(monkeypatch):
    # Not differentiated: the forward kernel runs without writing the per-chunk states.
    use_target(monkeypatch, TARGET)
    case = CASES[4]
    arrays, _, segment_ids = rounded_inputs(case, jnp.float32)
    o, final_state = delta_rule(**arrays, segment_ids=segment_ids, return_final_state=True,
                                backend="pallas", chunk_size=case.chunk_size)
    o_ref, final_ref = reference_forward(case, jnp.float32)
    assert relative_error(o, o_ref) < 1e-5
    assert relative_error(final_state, final_ref) < 1e-5
