"""Bad input raises a ValueError naming the argument, before any compute."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.ops import delta_rule

B, T, H, K, V = 2, 8, 2, 4, 3


def inputs(**overrides):
    rng = np.random.default_rng(0)
    arrays = dict(
        q=jnp.asarray(rng.normal(size=(B, T, H, K)), jnp.float32),
        k=jnp.asarray(rng.normal(size=(B, T, H, K)), jnp.float32),
        v=jnp.asarray(rng.normal(size=(B, T, H, V)), jnp.float32),
        beta=jnp.full((B, T, H), 0.5, jnp.float32),
    )
    arrays.update(overrides)
    return arrays


BAD_CALLS = {
    "q rank": (
        dict(q=jnp.zeros((B, T, K))), {},
        r"q must have shape \[batch, time, heads, head_dim\]"),
    "k shape": (dict(k=jnp.zeros((B, T, H, K + 1))), {}, r"k must have shape \(2, 8, 2, 4\)"),
    "v batch": (dict(v=jnp.zeros((B + 1, T, H, V))), {}, r"v must have shape \(2, 8, 2, V\)"),
    "beta shape": (
        dict(beta=jnp.zeros((B, T, H, 1))), {},
        r"beta must have shape \[batch, time, heads\]"),
    "gate shape": (
        {}, dict(gate=jnp.zeros((B, T))),
        r"gate must have shape \[batch, time, heads\]"),
    "state shape": (
        {}, dict(initial_state=jnp.zeros((B, H, V, K))),
        r"initial_state must have shape \[batch, heads, K, V\] = \(2, 2, 4, 3\)"),
    "segment shape": (
        {}, dict(segment_ids=jnp.zeros((B, T + 1), jnp.int32)),
        r"segment_ids must have shape \[batch, time\]"),
    "segment dtype": (
        {}, dict(segment_ids=jnp.zeros((B, T))),
        r"segment_ids must have an integer dtype"),
    "int q": (dict(q=jnp.zeros((B, T, H, K), jnp.int32)), {}, r"q must have a floating dtype"),
    "mixed dtypes": (
        dict(v=jnp.zeros((B, T, H, V), jnp.bfloat16)), {},
        r"q, k and v must share one dtype"),
    "gate > 0": ({}, dict(gate=jnp.full((B, T, H), 0.1)), r"gate must be a finite log-decay <= 0"),
    "gate nan": (
        {}, dict(gate=jnp.full((B, T, H), jnp.nan)),
        r"gate must be a finite log-decay <= 0"),
    "decreasing segments": (
        {}, dict(segment_ids=jnp.tile(jnp.arange(T, 0, -1), (B, 1))),
        r"segment_ids must be non-decreasing"),
    "chunk 48": ({}, dict(chunk_size=48), r"chunk_size must be a positive power of two, got 48"),
    "chunk 0": ({}, dict(chunk_size=0), r"chunk_size must be a positive power of two"),
    "backend": ({}, dict(backend="triton"), r"backend must be one of 'auto', .*got 'triton'"),
    "old backend name": (
        {}, dict(backend="scan_or_chunked"),
        r"backend must be one of .*'scan_chunked_vjp'"),
    "block_sizes off pallas": (
        {}, dict(backend="chunked", block_sizes=SimpleNamespace(min_chunk=16)),
                               r"block_sizes applies to the Pallas path only; backend='chunked'"),
    "scale array": ({}, dict(scale=jnp.ones(3)), r"scale must be a Python number"),
    "empty time": (dict(q=jnp.zeros((B, 0, H, K)), k=jnp.zeros((B, 0, H, K)),
                        v=jnp.zeros((B, 0, H, V)), beta=jnp.zeros((B, 0, H))), {},
                   r"at least one time step"),
}


@pytest.mark.parametrize("name", BAD_CALLS)
def test_bad_input_raises_value_error_naming_the_argument(name):
    overrides, kwargs, message = BAD_CALLS[name]
    with pytest.raises(ValueError, match=message):
        delta_rule(**inputs(**overrides), **kwargs)


def test_out_of_domain_values_under_jit_give_nan_not_a_silent_result():
    op = jax.jit(lambda gate, segment_ids:
                 delta_rule(**inputs(), gate=gate, segment_ids=segment_ids)[0])
    good_gate = jnp.full((B, T, H), -0.1)
    good_segments = jnp.zeros((B, T), jnp.int32)
    assert np.all(np.isfinite(op(good_gate, good_segments)))
    assert np.all(np.isnan(op(-good_gate, good_segments)))
    assert np.all(np.isnan(op(good_gate, good_segments.at[:, 0].set(1))))
