"""Both kernel sets in interpret mode against the float64 reference.

GPU (Triton) kernels with interpret=True; TPU (Mosaic) kernels in TPU interpret mode, which
raises on out-of-bounds reads and fills unwritten memory with NaN, so a wrong index map or a
state read before it is written fails here instead of on the chip. Each (case, target, dtype)
compiles one function (primal, forward-only primal and VJP) and the tests share its outputs.
"""

import jax.numpy as jnp
import pytest

from deltajax.ops import delta_rule
from pallas_kernels.block_sizes import BlockSizes
from tests.numerics import relative_error
from tests.ops.test_delta_rule import (
    assert_matches_float64_reference,
    reference_forward,
    reference_grads,
    rounded_inputs,
)
from tests.pallas_kernels.helpers import (
    FULL,
    RAW_K,
    assert_causal,
    one_hot_cotangents,
    outputs,
    run,
)

TARGETS = ("gpu", "tpu")
# (case, target): every feature on both kernel sets; the ill-conditioned solve on the GPU set
# (the per-chunk math is shared, chunk_math.py).
CASES = {"full-gpu": (FULL, "gpu"), "full-tpu": (FULL, "tpu"), "raw_k-gpu": (RAW_K, "gpu")}
# Every GPU tile choice away from the default: four value blocks of 16 (V=40 pads to 64) in the
# state passes and chunk_grads, other warp and stage counts.
OTHER_BLOCKS = BlockSizes(block_v=16, num_warps=2, num_warps_parallel=4, num_stages=1)


@pytest.fixture(scope="module", params=list(CASES))
def case_and_outputs(request):
    case, target = CASES[request.param]
    return case, outputs(case, target)


def test_pallas_matches_float64_reference(case_and_outputs):
    case, out = case_and_outputs
    assert_matches_float64_reference(case, out.o, out.final_state, out.grads)


def test_forward_only_call_matches_reference(case_and_outputs):
    # Not differentiated: the forward kernel runs without writing the per-chunk states.
    case, out = case_and_outputs
    o_ref, final_ref = reference_forward(case, jnp.float32)
    assert relative_error(out.o_forward_only, o_ref) < 1e-5
    assert relative_error(out.final_forward_only, final_ref) < 1e-5


@pytest.mark.parametrize("target", TARGETS)
def test_output_at_t_does_not_depend_on_later_tokens(target):
    t = 21  # mid-chunk: later tokens of the same chunk must not leak either
    do, dfinal = one_hot_cotangents(FULL, t)
    assert_causal(run(FULL, target, do=do, dfinal=dfinal).grads, t)   # outputs()' function


@pytest.mark.parametrize("target", TARGETS)
def test_bfloat16_inputs_keep_float32_state(target):
    out = outputs(FULL, target, jnp.bfloat16)
    o_ref, final_ref = reference_forward(FULL, jnp.bfloat16)
    assert out.o.dtype == jnp.bfloat16 and out.final_state.dtype == jnp.float32
    assert all(g.dtype == jnp.bfloat16 for g in out.grads.values())
    assert relative_error(out.o, o_ref) < 2e-2
    assert relative_error(out.o_forward_only, o_ref) < 2e-2
    assert relative_error(out.final_state, final_ref) < 2e-2
    grads_ref = reference_grads(FULL)
    for name, grad in out.grads.items():
        assert relative_error(grad, grads_ref[name]) < 5e-2, name


def test_other_block_sizes_give_the_default_result():
    default = outputs(FULL, "gpu")
    out = run(FULL, "gpu", block_sizes=OTHER_BLOCKS)
    # Only the summation order of the per-block partials of dq, dk, dbeta, dG differs.
    assert relative_error(out.o, default.o) < 1e-6
    assert relative_error(out.final_state, default.final_state) < 1e-6
    assert relative_error(out.o_forward_only, default.o_forward_only) < 1e-6
    for name, grad in out.grads.items():
        assert relative_error(grad, default.grads[name]) < 1e-6, name


def test_unjitted_delta_rule_call_matches_reference():
    # backend="pallas" through the public op, eagerly: on CPU that is the GPU kernel set.
    arrays, _, _ = rounded_inputs(RAW_K, jnp.float32)
    o, final_state = delta_rule(**arrays, return_final_state=True, backend="pallas",
                                chunk_size=RAW_K.chunk_size)
    o_ref, final_ref = reference_forward(RAW_K, jnp.float32)
    assert relative_error(o, o_ref) < 1e-5
    assert relative_error(final_state, final_ref) < 1e-5
