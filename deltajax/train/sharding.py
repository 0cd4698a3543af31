"""Meshes, shardings and multi-host setup: the only place that knows about devices."""

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from deltajax.train.config import mesh_shape

DATA, MODEL = "data", "model"


def maybe_initialize_distributed(config) -> None:
    """jax.distributed.initialize() from config.distributed, before any other JAX call.

    On TPU pods and SLURM/MPI GPU clusters the arguments may all be None (detected)."""
    d = config.distributed
    if d.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", d.cpu_collectives)
    if not d.initialize or jax.distributed.is_initialized():
        return
    jax.distributed.initialize(coordinator_address=d.coordinator_address,
                               num_processes=d.num_processes, process_id=d.process_id)


def make_mesh(config, devices=None) -> Mesh:
    """A (data, model) mesh over `devices` (default: all devices of all hosts)."""
    devices = jax.devices() if devices is None else list(devices)
    data, model = mesh_shape(config, len(devices))
    # create_device_mesh follows the TPU/GPU interconnect topology; on CPU it is a reshape.
    grid = mesh_utils.create_device_mesh((data, model), devices[:data * model])
    return Mesh(grid, (DATA, MODEL))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows of a [B, ...] batch split over the data axis, replicated over the model axis."""
    return NamedSharding(mesh, P(DATA))


def weight_sharding(shape, mesh: Mesh) -> NamedSharding:
    """The last dimension of a matrix on the model axis when it divides; otherwise replicated.

    The rule reads shapes only, so a model needs no annotations and Adam's moments (same
    shapes) land beside their parameters; XLA inserts the collectives."""
    model = mesh.shape[MODEL]
    if model > 1 and len(shape) >= 2 and shape[-1] % model == 0:
        return NamedSharding(mesh, P(*([None] * (len(shape) - 1)), MODEL))
    return NamedSharding(mesh, P())


def tree_shardings(abstract_tree, mesh: Mesh):
    return jax.tree.map(lambda x: weight_sharding(x.shape, mesh), abstract_tree)


def shard_batch(host_batch: dict, mesh: Mesh) -> dict:
    """This host's rows of the global batch -> global arrays sharded over the data axis."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in host_batch.items()}


def split_for_pmap(host_batch: dict, num_local_devices: int) -> dict:
    """[B, ...] -> [devices, B / devices, ...] for the pmap path."""
    return {k: np.asarray(v).reshape(num_local_devices, -1, *np.shape(v)[1:])
            for k, v in host_batch.items()}
