"""One process of the 2-process localhost test: python -m tests.train.multiprocess_worker
PROCESS_ID NUM_PROCESSES PORT WORKDIR OUTPUT_JSON. Two CPU devices per process, gloo collectives."""

import json
import sys

import jax

from deltajax.train import fit
from tests.train.helpers import MODEL, TRAIN_SOURCE, tiny_config

MULTIPROCESS_STEPS = 4


def multiprocess_config(process_id=None, num_processes=None, port=None):
    config = tiny_config(num_steps=MULTIPROCESS_STEPS, checkpoint__every_steps=2)
    if port is not None:
        config.distributed = dict(initialize=True, coordinator_address=f"127.0.0.1:{port}",
                                  num_processes=num_processes, process_id=process_id,
                                  cpu_collectives="gloo")
    return config


def main(process_id, num_processes, port, workdir, output):
    result = fit(multiprocess_config(process_id, num_processes, port), MODEL, TRAIN_SOURCE,
                 workdir)
    checksum = sum(float(jax.numpy.sum(jax.numpy.abs(x)))
                   for x in jax.tree.leaves(result.state.params))
    with open(output, "w") as f:
        json.dump({"devices": len(jax.devices()), "processes": jax.process_count(),
                   "losses": [h["loss"] for h in result.history], "checksum": checksum}, f)


if __name__ == "__main__":
    # Only when run as a worker: the pytest process that imports this module keeps its 8.
    jax.config.update("jax_num_cpu_devices", 2)
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
