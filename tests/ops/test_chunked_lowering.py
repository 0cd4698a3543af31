"""The chunked op lowers to plain XLA: no LAPACK custom call that could deadlock a CPU mesh."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.ops.chunked import _unit_lower_inverse, delta_rule_chunked
from tests.ops.cases import Case, make_inputs


@pytest.mark.parametrize("C", [1, 2, 5, 16, 64, 128])
def test_unit_lower_inverse_matches_numpy(C):
    rng = np.random.default_rng(C)
    k = rng.normal(size=(2, 3, C, 8))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    A = np.eye(C) + rng.uniform(0, 2, size=(2, 3, C, 1)) * np.tril(k @ np.swapaxes(k, -1, -2), -1)
    T = _unit_lower_inverse(jnp.asarray(A, jnp.float32))
    np.testing.assert_allclose(T, np.linalg.inv(A), rtol=1e-5, atol=1e-5)


def test_training_lowering_has_no_custom_calls():
    # jaxlib 0.10's CPU triangular solve is a LAPACK custom call that waits on the intra-op
    # thread pool; with 8 virtual devices in an all-reduce that pool is full and the step hangs.
    inputs, _ = make_inputs(Case(T=100, chunk_size=32, gate=True))
    arrays = {name: jnp.asarray(x, jnp.float32) for name, x in inputs.items()}

    def loss(arrays):
        o, _ = delta_rule_chunked(arrays["q"], arrays["k"], arrays["v"], arrays["beta"],
                                  gate_BTH=arrays["gate"], scale=0.25, chunk_size=32)
        return jnp.sum(o ** 2)

    text = jax.jit(jax.grad(loss)).lower(arrays).as_text()
    assert "custom_call" not in text
