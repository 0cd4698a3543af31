"""The kernels lower for real hardware: Pallas -> Triton IR (cuda) and -> Mosaic (tpu) on CPU.

Interpret mode runs any jnp code; lowering is where unsupported ops, non-power-of-two Triton
blocks or bad Mosaic block shapes fail. This checks that stage without a GPU or TPU (the Triton
and Mosaic compilers that follow it run only on the devices).
"""

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.block_sizes import BlockSizes
from pallas_kernels.delta_rule_gpu import delta_rule_gpu
from pallas_kernels.delta_rule_tpu import delta_rule_tpu
from pallas_kernels.recurrent_step import recurrent_step

KERNELS = {"cuda": delta_rule_gpu, "tpu": delta_rule_tpu}
CUSTOM_CALL = {"cuda": "stablehlo.custom_call @__gpu",
               "tpu": "stablehlo.custom_call @tpu_custom_call"}


def _lower(fn, platform, *args):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("platform, dtype, K, V, C, block_sizes", [
    ("cuda", jnp.bfloat16, 128, 128, 64, None),
    ("cuda", jnp.float32, 16, 256, 16, None),
    ("cuda", jnp.bfloat16, 64, 128, 32,
     BlockSizes(block_v=32, num_warps=2, num_warps_parallel=4, num_stages=3)),
    ("tpu", jnp.bfloat16, 128, 128, 64, None),
    ("tpu", jnp.float32, 256, 256, 32, None),
])
def test_chunked_forward_and_backward_lower(platform, dtype, K, V, C, block_sizes):
    N, T = 2, 2 * C
    tile = lambda d: jax.ShapeDtypeStruct((N, T, d), dtype)
    per_token = jax.ShapeDtypeStruct((N, T), jnp.float32)
    state = jax.ShapeDtypeStruct((N, K, V), jnp.float32)
    forward = lambda *args: KERNELS[platform](*args, chunk_size=C, block_sizes=block_sizes)

    def loss(q, k, v, beta, G, c, S0):
        o, final = forward(q, k, v, beta, G, c, S0)
        return jnp.sum(o.astype(jnp.float32)) + jnp.sum(final)

    args = (tile(K), tile(K), tile(V), per_token, per_token, per_token, state)
    assert CUSTOM_CALL[platform] in _lower(forward, platform, *args)
    text = _lower(jax.grad(loss, argnums=(0, 1, 2, 3, 4, 6)), platform, *args)
    assert CUSTOM_CALL[platform] in text
    for name in ("delta_rule_prepare", "delta_rule_backward", "delta_rule_chunk_grads"):
        assert name in text, name
    if platform == "cuda" and block_sizes is not None:
        # The tile choices reach the Triton calls: warps of each kernel, V / block_v programs.
        for num_warps in (block_sizes.num_warps, block_sizes.num_warps_parallel):
            assert f"num_warps = {num_warps} : i32" in text, num_warps
        assert f"grid_x = {V // block_sizes.block_v} : i32" in text


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_decode_step_lowers(platform):
    N, K, V = 4, 128, 128
    vec = lambda d: jax.ShapeDtypeStruct((N, d), jnp.bfloat16)
    scalar = jax.ShapeDtypeStruct((N,), jnp.float32)
    state = jax.ShapeDtypeStruct((N, K, V), jnp.float32)
    target = "gpu" if platform == "cuda" else "tpu"
    step = lambda *args: recurrent_step(*args, target=target)
    assert CUSTOM_CALL[platform] in _lower(step, platform, vec(K), vec(K), vec(V), scalar, scalar,
                                           state)
