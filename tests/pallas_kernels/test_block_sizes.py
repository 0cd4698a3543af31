"""BlockSizes: per-target defaults, hashable (a static argument), and errors naming the field."""

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.block_sizes import BlockSizes
from pallas_kernels.delta_rule_gpu import delta_rule_gpu
from pallas_kernels.delta_rule_tpu import delta_rule_tpu


def test_defaults_per_target():
    assert BlockSizes() == BlockSizes.gpu() == BlockSizes.for_target("gpu")
    assert BlockSizes().min_chunk == 16 and BlockSizes().block_v == 64
    assert BlockSizes().solve_precision == jax.lax.Precision.HIGH
    tpu = BlockSizes.for_target("tpu")
    assert tpu == BlockSizes.tpu() and tpu.block_v is None
    assert tpu.solve_precision == jax.lax.Precision.HIGHEST
    # Frozen and hashable: a jit / custom_vjp static argument.
    assert len({BlockSizes(), BlockSizes.gpu(), tpu}) == 2
    with pytest.raises(AttributeError):
        BlockSizes().block_v = 32


@pytest.mark.parametrize("kwargs, field", [
    (dict(block_v=24), "block_v"),
    (dict(block_v=8), "block_v"),
    (dict(num_warps=3), "num_warps"),
    (dict(num_warps=64), "num_warps"),
    (dict(num_warps_parallel=0), "num_warps_parallel"),
    (dict(num_stages=0), "num_stages"),
    (dict(min_chunk=12), "min_chunk"),
    (dict(min_chunk=4), "min_chunk"),
    (dict(solve_precision="high"), "solve_precision"),
])
def test_invalid_field_raises_naming_it(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        BlockSizes(**kwargs)


def test_unknown_target_raises():
    with pytest.raises(ValueError, match="target must be one of"):
        BlockSizes.for_target("cuda")


def _layout(C=16, T=32, K=16, V=16):
    N = 2
    return (jnp.zeros((N, T, K)), jnp.zeros((N, T, K)), jnp.zeros((N, T, V)), jnp.zeros((N, T)),
            jnp.zeros((N, T)), jnp.zeros((N, T)), jnp.zeros((N, K, V)))


@pytest.mark.parametrize("kernels", [delta_rule_gpu, delta_rule_tpu])
def test_kernels_check_chunk_size_and_block_sizes(kernels):
    with pytest.raises(ValueError, match=r"chunk_size must be a power of two >= "
                                         r"block_sizes.min_chunk=32, got 16"):
        kernels(*_layout(), chunk_size=16, block_sizes=BlockSizes(min_chunk=32))
    with pytest.raises(ValueError, match="chunk_size must be a power of two"):
        kernels(*_layout(), chunk_size=8)
    with pytest.raises(ValueError, match="block_sizes must be a BlockSizes"):
        kernels(*_layout(), chunk_size=16, block_sizes={"block_v": 16})
    with pytest.raises(ValueError, match="multiple of chunk_size=16"):
        kernels(*_layout(T=40), chunk_size=16)
