"""Every backend of delta_rule against the float64 reference, forward and backward."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.ops import delta_rule
from deltajax.ops.chunked import _layouts, delta_rule_chunked
from tests.numerics import relative_error
from tests.ops.cases import Case, cotangents, make_inputs
from tests.ops.reference import delta_rule_reference, delta_rule_reference_jax

BACKENDS = ("recurrent", "chunked")

# One case per behaviour; the later tests reuse these shapes, so jit's cache spares compiles.
CASES = [
    Case(T=1, chunk_size=16),                                    # a decode step
    Case(T=7, chunk_size=16, gate=True),                         # shorter than a chunk
    Case(T=64, chunk_size=64, initial_state=True),               # exactly one chunk
    Case(T=64, chunk_size=16, gate=True, initial_state=True),    # whole chunks, no padding
    Case(T=100, chunk_size=32, gate=True, segments=True),        # padded last chunk
    Case(T=100, chunk_size=16, segments=True, beta_max=2.0),     # resets without a gate
    Case(T=100, chunk_size=64, gate=True, normalize_k=False, beta_max=0.1),
    Case(T=257, chunk_size=32, gate=True, initial_state=True, segments=True, beta_max=2.0),
]
CAUSALITY_CASE = CASES[4]
BF16_CASE = CASES[-1]

@functools.partial(jax.jit, static_argnames=("backend", "chunk_size"))
def forward_and_vjp(arrays, segment_ids, do, dfinal, *, backend, chunk_size):
    def op(arrays):
        return delta_rule(**arrays, segment_ids=segment_ids, return_final_state=True,
                          backend=backend, chunk_size=chunk_size)
    (o, final_state), vjp = jax.vjp(op, arrays)
    (grads,) = vjp((do.astype(o.dtype), dfinal))
    return o, final_state, grads


def rounded_inputs(case: Case, dtype):
    """The inputs as the backend sees them (in dtype) and, for the reference, in float64."""
    inputs, segment_ids = make_inputs(case)
    arrays = {name: jnp.asarray(x, dtype) for name, x in inputs.items()}
    as_f64 = {name: np.asarray(x, np.float64) for name, x in arrays.items()}
    return arrays, as_f64, segment_ids


@functools.cache
def reference_forward(case: Case, dtype):
    _, inputs, segment_ids = rounded_inputs(case, dtype)
    return delta_rule_reference(**inputs, segment_ids=segment_ids)


@functools.cache
def reference_grads(case: Case):
    _, inputs, segment_ids = rounded_inputs(case, jnp.float32)
    do, dfinal = cotangents(case)
    with jax.enable_x64(True):
        op = lambda arrays: delta_rule_reference_jax(**arrays, segment_ids=segment_ids)
        (o, final_state), vjp = jax.vjp(op, {name: jnp.asarray(x) for name, x in inputs.items()})
        (grads,) = vjp((jnp.asarray(do), jnp.asarray(dfinal)))
    # The scanned reference must be the NumPy loop's function before its gradients count.
    o_ref, final_ref = reference_forward(case, jnp.float32)
    np.testing.assert_allclose(o, o_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(final_state, final_ref, rtol=1e-10, atol=1e-12)
    return {name: np.asarray(g) for name, g in grads.items()}


def assert_matches_float64_reference(case: Case, o, final_state, grads):
    """f32 values within 1e-5 and every gradient within 1e-4 of the float64 reference's."""
    o_ref, final_ref = reference_forward(case, jnp.float32)
    assert o.dtype == jnp.float32 and final_state.dtype == jnp.float32
    assert relative_error(o, o_ref) < 1e-5
    assert relative_error(final_state, final_ref) < 1e-5
    grads_ref = reference_grads(case)
    assert grads.keys() == grads_ref.keys()
    for name, grad in grads.items():
        assert relative_error(grad, grads_ref[name]) < 1e-4, name


def run(case: Case, backend: str, dtype=jnp.float32):
    arrays, _, segment_ids = rounded_inputs(case, dtype)
    do, dfinal = cotangents(case)
    return forward_and_vjp(arrays, segment_ids, jnp.asarray(do, jnp.float32),
                           jnp.asarray(dfinal, jnp.float32), backend=backend,
                           chunk_size=case.chunk_size)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_backend_matches_float64_reference(case, backend):
    o, final_state, grads = run(case, backend)
    assert_matches_float64_reference(case, o, final_state, grads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_inputs_keep_float32_state(backend):
    o, final_state, grads = run(BF16_CASE, backend, jnp.bfloat16)
    o_ref, final_ref = reference_forward(BF16_CASE, jnp.bfloat16)
    assert o.dtype == jnp.bfloat16 and final_state.dtype == jnp.float32
    assert all(g.dtype == jnp.bfloat16 for g in grads.values())
    assert relative_error(o, o_ref) < 2e-2
    assert relative_error(final_state, final_ref) < 2e-2


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "scanned"])
def test_both_chunked_layouts_match_float64_reference(batched):
    # The op picks the layout by size (these shapes: batched); each is checked here.
    case = CASES[-1]
    arrays, _, segment_ids = rounded_inputs(case, jnp.float32)
    do, dfinal = cotangents(case)

    @jax.jit
    def forward_and_vjp(arrays):
        def op(arrays):
            names = dict(gate="gate_BTH", initial_state="initial_state_BHKV")
            return delta_rule_chunked(
                arrays["q"], arrays["k"], arrays["v"], arrays["beta"],
                **{names[n]: arrays[n] for n in names}, segment_ids_BT=segment_ids,
                scale=case.K ** -0.5, chunk_size=case.chunk_size, batched=batched)
        (o, final_state), vjp = jax.vjp(op, arrays)
        return o, final_state, vjp((jnp.asarray(do, jnp.float32), jnp.asarray(dfinal)))[0]

    assert_matches_float64_reference(case, *forward_and_vjp(arrays))


def test_cpu_layout_choice_batches_only_few_small_chunks():
    # (chunks, elements of one [chunks, C, max(C, K, V)] array over B and H) -> (evaluated call
    # batched, differentiated call batched). The batched layout keeps every chunk's factors.
    def elements(T, B, H, K, C=64):
        return -(-T // C) * B * H * C * max(C, K)

    assert _layouts("cpu", 2, elements(128, B=32, H=1, K=64)) == (False, True)  # MQAR's CPU run
    assert _layouts("cpu", 8, elements(512, B=1, H=4, K=64)) == (False, True)
    # The memory of T = 1024 at K = 64 stays the scanned layout's (1.7-2x less).
    assert _layouts("cpu", 16, elements(1024, B=1, H=4, K=64)) == (False, False)
    assert _layouts("cpu", 4, elements(256, B=64, H=2, K=32)) == (False, False)  # 8 MiB
    assert _layouts("gpu", 16, elements(1024, B=1, H=4, K=64)) == (True, True)


def test_auto_backend_matches_reference_for_training_and_decoding():
    # T = 1 (a decode step) and T = 257 with every optional input.
    for case in (CASES[0], CASES[-1]):
        assert_matches_float64_reference(case, *run(case, "auto"))


def test_scan_chunked_vjp_evaluates_with_the_scan_and_differentiates_with_the_chunked_vjp():
    case = CAUSALITY_CASE
    arrays, _, segment_ids = rounded_inputs(case, jnp.float32)
    evaluate = lambda backend: jax.jit(functools.partial(
        delta_rule, segment_ids=segment_ids, return_final_state=True, backend=backend,
        chunk_size=case.chunk_size))(**arrays)
    for value, value_scan in zip(evaluate("scan_chunked_vjp"), evaluate("recurrent"), strict=True):
        np.testing.assert_array_equal(value, value_scan)
    # Under jax.vjp the forward is the chunked path's too: its residuals feed its backward.
    o, final_state, grads = run(case, "scan_chunked_vjp")
    o_chunked, final_chunked, grads_chunked = run(case, "chunked")
    np.testing.assert_array_equal(o, o_chunked)
    np.testing.assert_array_equal(final_state, final_chunked)
    for name, grad in grads.items():
        np.testing.assert_array_equal(grad, grads_chunked[name], err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_at_t_does_not_depend_on_later_tokens(backend):
    case = CAUSALITY_CASE
    arrays, _, segment_ids = rounded_inputs(case, jnp.float32)
    t = 45  # mid-chunk: later tokens of the same chunk must not leak either
    do = np.zeros((case.B, case.T, case.H, case.V), np.float32)
    do[:, t] = 1.0
    dfinal = jnp.zeros((case.B, case.H, case.K, case.V), jnp.float32)
    _, _, grads = forward_and_vjp(arrays, segment_ids, jnp.asarray(do), dfinal,
                                  backend=backend, chunk_size=case.chunk_size)
    for name in ("q", "k", "v", "beta", "gate"):
        assert np.all(np.asarray(grads[name])[:, t + 1:] == 0.0), name
        assert np.any(np.asarray(grads[name])[:, : t + 1] != 0.0), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_segments_equal_separate_runs(backend):
    case = Case(T=64, chunk_size=16, gate=True, initial_state=True)
    arrays, _, _ = rounded_inputs(case, jnp.float32)
    lengths = (5, 40, 19)  # the middle one spans chunk boundaries
    segment_ids = jnp.asarray(np.repeat(np.arange(3), lengths)[None].repeat(case.B, 0), jnp.int32)
    op = jax.jit(functools.partial(delta_rule, return_final_state=True, backend=backend,
                                   chunk_size=case.chunk_size))
    o_packed, final_packed = op(**arrays, segment_ids=segment_ids)

    start = 0
    for index, length in enumerate(lengths):
        piece = {name: x[:, start:start + length] for name, x in arrays.items()
                 if name != "initial_state"}
        if index == 0:
            piece["initial_state"] = arrays["initial_state"]
        o_alone, final_alone = op(**piece)
        assert relative_error(o_packed[:, start:start + length], o_alone) < 1e-6
        start += length
    assert relative_error(final_packed, final_alone) < 1e-6


def test_unjitted_call_matches_reference():
    case = Case(T=7, chunk_size=16, gate=True)
    arrays, _, _ = rounded_inputs(case, jnp.float32)
    for backend in BACKENDS:
        o, final_state = delta_rule(**arrays, return_final_state=True, backend=backend)
        o_ref, final_ref = reference_forward(case, jnp.float32)
        assert relative_error(o, o_ref) < 1e-5
        assert relative_error(final_state, final_ref) < 1e-5


def test_final_state_is_none_unless_asked_for():
    arrays, _, _ = rounded_inputs(Case(T=7), jnp.float32)
    o, final_state = delta_rule(**arrays, backend="recurrent")
    assert final_state is None and o.shape == arrays["v"].shape
