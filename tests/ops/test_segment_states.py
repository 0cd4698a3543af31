"""Per-segment initial and final states (num_segments, FLA's cu_seqlens capability): a packed row
computes what each segment computes alone from its own initial state, values and gradients
against the float64 reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.ops import delta_rule
from tests.numerics import relative_error
from tests.ops.reference import delta_rule_reference_jax

B, T, H, K, V = 2, 20, 2, 8, 6
NUM_SEGMENTS = 4
# Row 0: three segments (one of length 1) and an unused slot; row 1: one segment, three unused.
LENGTHS = ([7, 1, 12], [20])


def segment_ids():
    return jnp.asarray([np.repeat(np.arange(len(lengths)) + 5, lengths) for lengths in LENGTHS],
                       jnp.int32)


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    k = rng.normal(size=(B, T, H, K))
    arrays = dict(q=rng.normal(size=(B, T, H, K)), k=k / np.linalg.norm(k, axis=-1, keepdims=True),
                  v=rng.normal(size=(B, T, H, V)), beta=rng.uniform(0, 2, size=(B, T, H)),
                  gate=np.log(rng.uniform(0.8, 1.0, size=(B, T, H))),
                  initial_state=rng.normal(size=(B, NUM_SEGMENTS, H, K, V)))
    return {name: jnp.asarray(x, jnp.float32) for name, x in arrays.items()}


def packed_loss(arrays, backend="auto"):
    o, finals = delta_rule(**arrays, segment_ids=segment_ids(), num_segments=NUM_SEGMENTS,
                           return_final_state=True, backend=backend)
    return o, finals


def alone(arrays):
    """Each segment on its own through the float64 reference (call under enable_x64)."""
    o_rows, final_rows = [], []
    for b, lengths in enumerate(LENGTHS):
        starts = np.cumsum([0, *lengths])
        outputs, finals = [], list(arrays["initial_state"][b])
        for n, (start, end) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
            piece = {name: arrays[name][b:b + 1, start:end] for name in ("q", "k", "v", "beta",
                                                                        "gate")}
            o, final = delta_rule_reference_jax(
                **piece, initial_state=arrays["initial_state"][b:b + 1, n])
            outputs.append(o[0])
            finals[n] = final[0]
        o_rows.append(jnp.concatenate(outputs))
        final_rows.append(jnp.stack(finals))
    return jnp.stack(o_rows), jnp.stack(final_rows)


def weighted_sum(o, finals, seed=1):
    rng = np.random.default_rng(seed)
    return (jnp.sum(o * rng.normal(size=o.shape)) + jnp.sum(finals * rng.normal(size=finals.shape)))


def test_each_segment_starts_from_its_state_and_ends_in_its_slot():
    arrays = inputs()
    o, finals = jax.jit(packed_loss)(arrays)
    grads = jax.jit(jax.grad(lambda a: weighted_sum(*packed_loss(a))))(arrays)
    with jax.enable_x64(True):
        as_f64 = {name: jnp.asarray(np.asarray(x), jnp.float64) for name, x in arrays.items()}
        # One compile for the four scans of the segments alone.
        (o_ref, finals_ref), grads_ref = jax.jit(
            lambda a: (alone(a), jax.grad(lambda a: weighted_sum(*alone(a)))(a)))(as_f64)
    assert finals.shape == (B, NUM_SEGMENTS, H, K, V)
    assert relative_error(o, o_ref) < 1e-5
    assert relative_error(finals, finals_ref) < 1e-5
    # Slots a row does not use keep their initial states.
    np.testing.assert_array_equal(finals[0, 3], arrays["initial_state"][0, 3])
    np.testing.assert_array_equal(finals[1, 1:], arrays["initial_state"][1, 1:])
    for name, grad in grads.items():
        assert relative_error(grad, grads_ref[name]) < 1e-4, name


@pytest.mark.parametrize("bad, message", [
    (dict(backend="chunked"), r"num_segments .* backend must be 'auto' or 'recurrent'"),
    (dict(segment_ids=None), r"num_segments needs segment_ids"),
    (dict(num_segments=0), r"num_segments must be a positive integer"),
    (dict(num_segments=2), r"segment_ids has a row of 3 segments, more than num_segments=2"),
    (dict(initial_state=jnp.zeros((B, H, K, V))), r"initial_state must have shape "
                                                 r"\[batch, num_segments, heads, K, V\]"),
])
def test_bad_per_segment_arguments_raise_naming_them(bad, message):
    arrays = inputs()
    call = dict(arrays, segment_ids=segment_ids(), num_segments=NUM_SEGMENTS, backend="auto")
    if "num_segments" in bad and bad["num_segments"] == 2:
        call["initial_state"] = arrays["initial_state"][:, :2]
    call.update(bad)
    with pytest.raises(ValueError, match=message):
        delta_rule(**call)


def test_too_many_segments_under_jit_is_nan():
    arrays = dict(inputs(), initial_state=None)
    o, finals = jax.jit(lambda a, ids: delta_rule(**a, segment_ids=ids, num_segments=2,
                                                  return_final_state=True))(arrays, segment_ids())
    assert np.all(np.isnan(o)) and np.all(np.isnan(finals))
