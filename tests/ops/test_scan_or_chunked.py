"""The evaluate-with-the-scan, differentiate-with-the-chunked-VJP path."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from deltajax.ops.chunked import delta_rule_chunked
from deltajax.ops.recurrent import delta_rule_recurrent
from deltajax.ops.scan_or_chunked import delta_rule_scan_or_chunked
from tests.ops.cases import Case, make_inputs

CASE = Case(T=100, chunk_size=32, gate=True, initial_state=True, segments=True, beta_max=2.0)


def op_inputs():
    inputs, segment_ids = make_inputs(CASE)
    f32 = {name: jnp.asarray(x, jnp.float32) for name, x in inputs.items()}
    return f32, dict(scale=0.3, gate_BTH=f32.pop("gate"), initial_state_BHKV=f32.pop("initial_state"),
                     segment_ids_BT=jnp.asarray(segment_ids))


def test_evaluation_runs_the_scan_and_differentiation_the_chunked_vjp():
    arrays, kwargs = op_inputs()
    positional = (arrays["q"], arrays["k"], arrays["v"], arrays["beta"])
    o, final_state = jax.jit(functools.partial(delta_rule_scan_or_chunked, chunk_size=32, **kwargs))(*positional)
    o_scan, final_scan = jax.jit(functools.partial(delta_rule_recurrent, **kwargs))(*positional)
    np.testing.assert_array_equal(o, o_scan)
    np.testing.assert_array_equal(final_state, final_scan)

    def grads(op):
        loss = lambda *a: jnp.sum(jnp.sin(op(*a, chunk_size=32, **kwargs)[0]))
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*positional)

    for grad, grad_chunked in zip(grads(delta_rule_scan_or_chunked), grads(delta_rule_chunked)):
        np.testing.assert_array_equal(grad, grad_chunked)
