"""A run that the preemption tests stop with a signal: python -m tests.train.preemption_worker
WORKDIR OUTPUT_JSON [PROCESS_ID NUM_PROCESSES PORT]. Reads its batches slowly, so that the
signal comes mid-run; with the last three arguments, one of several localhost processes."""

import json
import sys
import threading
import time

import jax

from deltajax.train import fit
from tests.train.helpers import MODEL, TRAIN_SOURCE, tiny_config

PREEMPTION_STEPS = 40


def preemption_config(process_id=None, num_processes=None, port=None):
    config = tiny_config(num_steps=PREEMPTION_STEPS, checkpoint__every_steps=5,
                         checkpoint__max_to_keep=20, logging__every_steps=1)
    if port is not None:
        config.distributed = dict(initialize=True, coordinator_address=f"127.0.0.1:{port}",
                                  num_processes=num_processes, process_id=process_id,
                                  cpu_collectives="gloo")
    return config


class SlowSource:
    """TRAIN_SOURCE at ~50 ms per batch of 8 when grain's threads read it (fit's checks before
    training read it on the main thread, at full speed)."""

    def __len__(self):
        return len(TRAIN_SOURCE)

    def __getitem__(self, index):
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.006)
        return TRAIN_SOURCE[index]


def main(workdir, output, *distributed):
    config = preemption_config(*(int(a) for a in distributed))
    devices = None if distributed else jax.devices()[:1]
    result = fit(config, MODEL, SlowSource(), workdir, devices=devices)
    with open(output, "w") as f:
        json.dump({"preempted": result.preempted, "step": int(result.state.step),
                   "history": result.history}, f)


if __name__ == "__main__":
    # As tests/conftest.py (the same XLA programs); one device per process when distributed.
    jax.config.update("jax_num_cpu_devices", 8 if len(sys.argv) == 3 else 1)
    main(*sys.argv[1:])
