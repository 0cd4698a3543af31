"""One process of the 2-process localhost test: python -m tests.train.multiprocess_worker
PROCESS_ID NUM_PROCESSES PORT WORKDIR OUTPUT_JSON. Two CPU devices per process, gloo collectives.

Each pair of processes runs every scenario (starting processes costs more than the runs):
an uninterrupted jit run, and a pmap run stopped at a checkpoint and resumed."""

import functools
import json
import os
import sys

import jax
import numpy as np

from deltajax.train import fit
from tests.train.helpers import MODEL, TRAIN_SOURCE, tiny_config

MULTIPROCESS_STEPS = 4


def multiprocess_config(process_id=None, num_processes=None, port=None, **overrides):
    config = tiny_config(num_steps=MULTIPROCESS_STEPS, checkpoint__every_steps=2, **overrides)
    if port is not None:
        config.distributed = dict(initialize=True, coordinator_address=f"127.0.0.1:{port}",
                                  num_processes=num_processes, process_id=process_id,
                                  cpu_collectives="gloo")
    return config


def max_abs_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def main(process_id, num_processes, port, workdir, output):
    config = functools.partial(multiprocess_config, process_id, num_processes, port)
    result = fit(config(), MODEL, TRAIN_SOURCE, os.path.join(workdir, "jit"))
    checksum = sum(float(jax.numpy.sum(jax.numpy.abs(x)))
                   for x in jax.tree.leaves(result.state.params))
    pmap = config(mesh__parallelism="pmap")
    first = fit(pmap, MODEL, TRAIN_SOURCE, os.path.join(workdir, "pmap"), stop_at=2)
    resumed = fit(pmap, MODEL, TRAIN_SOURCE, os.path.join(workdir, "pmap"))
    with open(output, "w") as f:
        json.dump({"devices": len(jax.devices()), "processes": jax.process_count(),
                   "losses": [h["loss"] for h in result.history], "checksum": checksum,
                   "pmap_steps": [[h["step"] for h in r.history] for r in (first, resumed)],
                   "pmap_losses": [h["loss"] for h in first.history + resumed.history],
                   "pmap_vs_jit": max_abs_diff(resumed.state, result.state)}, f)


if __name__ == "__main__":
    # Only when run as a worker: the pytest process that imports this module keeps its 8.
    jax.config.update("jax_num_cpu_devices", 2)
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
