"""The one-token decode kernel against the recurrent backend (one step, gate and resets)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.ops import delta_rule
from pallas_kernels.block_sizes import BlockSizes
from pallas_kernels.recurrent_step import recurrent_step
from tests.numerics import relative_error


# V = 128: two value blocks on the GPU kernel by default, four with block_v=32; the TPU kernel
# takes the whole V. Each dtype on at least one kernel set.
@pytest.mark.parametrize("target, dtype, block_sizes", [
    ("gpu", jnp.float32, None),
    ("gpu", jnp.bfloat16, BlockSizes(block_v=32, num_warps=2)),
    ("tpu", jnp.bfloat16, None),
])
def test_step_matches_recurrent_backend(target, dtype, block_sizes):
    rng = np.random.default_rng(0)
    B, H, K, V = 2, 2, 16, 128
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
    step = jax.jit(lambda *args: recurrent_step(*args, target=target, interpret=True,
                                                block_sizes=block_sizes))
    o_NV, S_NKV = step(cast(flat(q * K ** -0.5)), cast(flat(k)), cast(flat(v)), flat(beta)[:, 0],
                       jnp.exp(flat(gate)[:, 0]),
                       jnp.asarray(S0, jnp.float32).reshape(B * H, K, V))
    tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
    assert o_NV.dtype == dtype and S_NKV.dtype == jnp.float32
    assert relative_error(o_NV.reshape(B, H, V), o_ref[:, 0]) < tolerance
    assert relative_error(S_NKV.reshape(B, H, K, V), S_ref) < tolerance


def test_step_rejects_bad_target_and_state():
    x = jnp.zeros((2, 16))
    with pytest.raises(ValueError, match="target must be one of"):
        recurrent_step(x, x, x, x[:, 0], x[:, 0], jnp.zeros((2, 16, 16)), target="cuda")
    with pytest.raises(ValueError, match="S_NKV must be float32"):
        recurrent_step(x, x, x, x[:, 0], x[:, 0], jnp.zeros((2, 16, 8)))
