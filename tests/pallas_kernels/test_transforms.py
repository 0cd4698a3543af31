"""The Pallas path under vmap, data-parallel shard_map and pmap over 8 CPU devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from deltajax.ops import delta_rule
from tests.numerics import relative_error
from tests.ops.cases import Case
from tests.ops.test_delta_rule import rounded_inputs
from tests.pallas_kernels.helpers import FAST_COMPILE, pallas_op

# JAX 0.10's TPU interpreter simulates the devices of a mapped axis with a threading.Barrier
# across their kernel calls, which deadlocks when XLA:CPU runs the 8 virtual devices on fewer
# threads (2 cores here); the data-parallel tests therefore run the GPU kernel set. The kernels
# are per-shard local either way: the data-parallel part is the same adapter code.
CASE = Case(T=20, chunk_size=16, gate=True, initial_state=True, segments=True, B=8, H=1)
VMAPPED = 2   # examples under vmap: the batching rule is the same for 2 as for 8


def _loss_and_grads(arrays, segment_ids, target):
    def loss(arrays):
        if target == "recurrent":
            o, final_state = delta_rule(**arrays, segment_ids=segment_ids,
                                        return_final_state=True, backend="recurrent")
        else:
            o, final_state = pallas_op(arrays, segment_ids, target=target, chunk_size=16)
        return jnp.sum(o * o) + jnp.sum(final_state)
    return jax.value_and_grad(loss)(arrays)


def _per_example(arrays, segment_ids, count=CASE.B):
    """The first count examples with a leading axis of examples, each of batch 1."""
    return ({name: x[:count, None] for name, x in arrays.items()},
            jnp.asarray(segment_ids)[:count, None])


@functools.cache
def _expected():
    arrays, _, segment_ids = rounded_inputs(CASE, jnp.float32)
    per_example = jax.jit(jax.vmap(lambda a, s: _loss_and_grads(a, s, "recurrent")),
                          compiler_options=FAST_COMPILE)
    return per_example(*_per_example(arrays, segment_ids))


def _assert_close(actual, expected, count=CASE.B):
    (loss, grads), (loss_ref, grads_ref) = actual, expected
    assert relative_error(loss, loss_ref[:count]) < 1e-5
    for name, grad in grads.items():
        assert relative_error(grad, grads_ref[name][:count]) < 1e-4, name


@pytest.mark.parametrize("target", ["gpu", "tpu"])
def test_vmap(target):
    arrays, _, segment_ids = rounded_inputs(CASE, jnp.float32)
    fn = jax.jit(jax.vmap(lambda a, s: _loss_and_grads(a, s, target)),
                 compiler_options=FAST_COMPILE)
    _assert_close(fn(*_per_example(arrays, segment_ids, VMAPPED)), _expected(), VMAPPED)


def test_data_parallel_shard_map():
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    arrays, _, segment_ids = rounded_inputs(CASE, jnp.float32)
    specs = {name: P("data") for name in arrays}

    def local(arrays, segment_ids):
        loss, grads = _loss_and_grads(arrays, segment_ids, "gpu")
        return loss[None], grads

    # check_vma=False only for the interpreter: JAX 0.10's Pallas HLO interpreter mixes the
    # kernel's unvarying constants with varying blocks. Compiled kernels declare their outputs'
    # varying axes (pallas_kernels/shapes.py), which is what check_vma=True needs.
    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(specs, P("data")),
                               out_specs=(P("data"), specs), check_vma=False),
                 compiler_options=FAST_COMPILE)
    loss, grads = fn(arrays, jnp.asarray(segment_ids))
    _assert_close((loss, {name: g[:, None] for name, g in grads.items()}), _expected())


def test_data_parallel_pmap():
    arrays, _, segment_ids = rounded_inputs(CASE, jnp.float32)
    args = _per_example(arrays, segment_ids)
    fn = jax.pmap(lambda a, s: _loss_and_grads(a, s, "gpu")).lower(*args).compile(FAST_COMPILE)
    _assert_close(fn(*args), _expected())
