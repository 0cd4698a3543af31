"""backend="pallas" under vmap, data-parallel shard_map and pmap over 8 CPU devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from deltajax.ops import delta_rule
from tests.numerics import relative_error
from tests.ops.cases import Case
from tests.ops.test_delta_rule import rounded_inputs
from tests.pallas_kernels.helpers import use_target

TARGETS = ("gpu", "tpu")
# JAX 0.10's TPU interpreter simulates the devices of a mapped axis with a threading.Barrier
# across their kernel calls, which deadlocks when XLA:CPU runs the 8 virtual devices on fewer
# threads (2 cores here); the data-parallel tests therefore run the GPU kernel set. The kernels
# are per-shard local either way: the data-parallel part is the same adapter code.
DATA_PARALLEL_TARGETS = ("gpu",)
CASE = Case(T=20, chunk_size=16, gate=True, initial_state=True, segments=True, B=8, H=1)


def _loss_and_grads(arrays, segment_ids, backend):
    def loss(arrays):
        o, final_state = delta_rule(**arrays, segment_ids=segment_ids, return_final_state=True,
                                    backend=backend, chunk_size=16)
        return jnp.sum(o * o) + jnp.sum(final_state)
    return jax.value_and_grad(loss)(arrays)


def _per_example(arrays, segment_ids):
    """The arrays with a leading axis of the 8 batch elements, each of batch 1."""
    return ({name: x[:, None] for name, x in arrays.items()}, jnp.asarray(segment_ids)[:, None])


@functools.lru_cache(maxsize=None)
def _expected():
    arrays, _, segment_ids = rounded_inputs(CASE, jnp.float32)
    per_example = jax.vmap(lambda a, s: _loss_and_grads(a, s, "recurrent"))
    return per_example(*_per_example(arrays, segment_ids))


def _assert_close(actual, expected):
    (loss, grads), (loss_ref, grads_ref) = actual, expected
    assert relative_error(loss, loss_ref) < 1e-5
    for name, grad in grads.items():
        assert relative_error(grad, grads_ref[name]) < 1e-4, name


@pytest.mark.parametrize("target", TARGETS)
def test_vmap(target, monkeypatch):
    use_target(monkeypatch, target)
    arrays, _, segment_ids = rounded_inputs(CASE, jnp.float32)
    fn = jax.jit(jax.vmap(lambda a, s: _loss_and_grads(a, s, "pallas")))
    _assert_close(fn(*_per_example(arrays, segment_ids)), _expected())


@pytest.mark.parametrize("target", DATA_PARALLEL_TARGETS)
def test_data_parallel_shard_map(target, monkeypatch):
    use_target(monkeypatch, target)
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    arrays, _, segment_ids = rounded_inputs(CASE, jnp.float32)
    specs = {name: P("data") for name in arrays}

    def local(arrays, segment_ids):
        loss, grads = _loss_and_grads(arrays, segment_ids, "pallas")
        return loss[None], grads

    # check_vma=False only for the interpreter: JAX 0.10's Pallas HLO interpreter mixes the
    # kernel's unvarying constants with varying blocks. Compiled kernels declare their outputs'
    # varying axes (pallas_kernels/shapes.py), which is what check_vma=True needs.
    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(specs, P("data")),
                               out_specs=(P("data"), specs), check_vma=False))
    loss, grads = fn(arrays, jnp.asarray(segment_ids))
    expected_loss, expected_grads = _expected()
    _assert_close((loss, {name: g[:, None] for name, g in grads.items()}),
                  (expected_loss, expected_grads))


@pytest.mark.parametrize("target", DATA_PARALLEL_TARGETS)
def test_data_parallel_pmap(target, monkeypatch):
    use_target(monkeypatch, target)
    arrays, _, segment_ids = rounded_inputs(CASE, jnp.float32)
    fn = jax.pmap(lambda a, s: _loss_and_grads(a, s, "pallas"))
    _assert_close(fn(*_per_example(arrays, segment_ids)), _expected())
