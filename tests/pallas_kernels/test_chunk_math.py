"""The two UT solves of chunk_math against NumPy's inverse, on hard (beta = 2, raw k) inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import chunk_math
from tests.numerics import relative_error


@pytest.mark.parametrize("C", [16, 64])
@pytest.mark.parametrize("normalize_k", [True, False])
@pytest.mark.parametrize("invert", [chunk_math.invert_unit_lower,
                                    chunk_math.invert_unit_lower_doubling])
def test_ut_solve_matches_numpy_inverse(C, normalize_k, invert):
    rng = np.random.default_rng(C)
    k = rng.normal(size=(C, 16))
    if normalize_k:
        k /= np.linalg.norm(k, axis=-1, keepdims=True)
    beta = rng.uniform(0, 2 if normalize_k else 0.1, size=(C, 1))
    L = np.tril(beta * (k @ k.T), -1)
    expected = np.linalg.inv(np.eye(C) + L)
    actual = jax.jit(invert)(jnp.asarray(L, jnp.float32))
    assert relative_error(actual, expected) < 1e-5
