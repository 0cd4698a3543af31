"""The kernels lower for real hardware: Pallas -> Triton IR (cuda) and -> Mosaic (tpu) on CPU.

Interpret mode runs any jnp code; lowering is where unsupported ops, non-power-of-two Triton
blocks or bad Mosaic block shapes fail. This checks that stage without a GPU or TPU (the Triton
and Mosaic compilers that follow it run only on the devices).
"""

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels import delta_rule_gpu, delta_rule_tpu
from pallas_kernels.recurrent_step import recurrent_step

KERNELS = {"cuda": delta_rule_gpu, "tpu": delta_rule_tpu}
CUSTOM_CALL = {"cuda": "stablehlo.custom_call @__gpu",
               "tpu": "stablehlo.custom_call @tpu_custom_call"}


def _lower(fn, platform, *args):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("platform, dtype, K, V, C", [
    ("cuda", jnp.bfloat16, 128, 128, 64),
    ("cuda", jnp.float32, 16, 256, 16),
    ("tpu", jnp.bfloat16, 128, 128, 64),
    ("tpu", jnp.float32, 256, 256, 32),
])
def test_chunked_forward_and_backward_lower(platform, dtype, K, V, C):
    BH, T = 2, 2 * C
    tile = lambda d: jax.ShapeDtypeStruct((BH, T, d), dtype)
    per_token = jax.ShapeDtypeStruct((BH, T), jnp.float32)
    state = jax.ShapeDtypeStruct((BH, K, V), jnp.float32)

    def loss(q, k, v, beta, G, c, S0):
        o, final = KERNELS[platform].delta_rule_chunked(q, k, v, beta, G, c, S0, chunk_size=C)
        return jnp.sum(o.astype(jnp.float32)) + jnp.sum(final)

    args = (tile(K), tile(K), tile(V), per_token, per_token, per_token, state)
    forward = lambda *args: KERNELS[platform].delta_rule_chunked(*args, chunk_size=C)
    assert CUSTOM_CALL[platform] in _lower(forward, platform, *args)
    text = _lower(jax.grad(loss, argnums=(0, 1, 2, 3, 4, 6)), platform, *args)
    assert CUSTOM_CALL[platform] in text
    for name in ("delta_rule_prepare", "delta_rule_backward", "delta_rule_chunk_grads"):
        assert name in text, name


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_decode_step_lowers(platform):
    BH, K, V = 4, 128, 128
    vec = lambda d: jax.ShapeDtypeStruct((BH, d), jnp.bfloat16)
    scalar = jax.ShapeDtypeStruct((BH,), jnp.float32)
    state = jax.ShapeDtypeStruct((BH, K, V), jnp.float32)
    target = "gpu" if platform == "cuda" else "tpu"
    step = lambda *args: recurrent_step(*args, target=target)
    assert CUSTOM_CALL[platform] in _lower(step, platform, vec(K), vec(K), vec(V), scalar, scalar,
                                           state)
