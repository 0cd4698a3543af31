"""The one-token decode kernel against the recurrent backend (one step, gate and resets)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.ops import delta_rule
from pallas_kernels.recurrent_step import recurrent_step
from tests.numerics import relative_error


@pytest.mark.parametrize("target", ["gpu", "tpu"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_step_matches_recurrent_backend(target, dtype):
    rng = np.random.default_rng(0)
    B, H, K, V = 2, 2, 16, 128   # V = 128: two value blocks on the GPU kernel
    q, k = rng.normal(size=(2, B, 1, H, K))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.normal(size=(B, 1, H, V))
    beta = rng.uniform(0, 2, size=(B, 1, H))
    gate = np.log(rng.uniform(0.8, 1.0, size=(B, 1, H)))
    S0 = rng.normal(size=(B, H, K, V))
    cast = lambda x: jnp.asarray(x, dtype)
    o_ref, S_ref = delta_rule(cast(q), cast(k), cast(v), jnp.asarray(beta, jnp.float32),
                              gate=jnp.asarray(gate, jnp.float32),
                              initial_state=jnp.asarray(S0, jnp.float32),
                              return_final_state=True, backend="recurrent")

    flat = lambda x: jnp.asarray(x).reshape(B * H, -1)
    step = jax.jit(lambda *args: recurrent_step(*args, target=target, interpret=True))
    o, S = step(cast(flat(q * K ** -0.5)), cast(flat(k)), cast(flat(v)), flat(beta)[:, 0],
                jnp.exp(flat(gate)[:, 0]), jnp.asarray(S0, jnp.float32).reshape(B * H, K, V))
    tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
    assert o.dtype == dtype and S.dtype == jnp.float32
    assert relative_error(o.reshape(B, H, V), o_ref[:, 0]) < tolerance
    assert relative_error(S.reshape(B, H, K, V), S_ref) < tolerance
