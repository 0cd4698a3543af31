"""A run that the preemption test stops with a signal: python -m tests.train.preemption_worker
WORKDIR OUTPUT_JSON. Reads its batches slowly, so that the signal comes mid-run."""

import json
import sys
import time

import jax

from deltajax.train import fit
from tests.train.helpers import MODEL, TRAIN_SOURCE, tiny_config

PREEMPTION_STEPS = 40


def preemption_config():
    return tiny_config(num_steps=PREEMPTION_STEPS, checkpoint__every_steps=5,
                       checkpoint__max_to_keep=20, logging__every_steps=1)


class SlowSource:
    """TRAIN_SOURCE at ~50 ms per batch of 8."""

    def __len__(self):
        return len(TRAIN_SOURCE)

    def __getitem__(self, index):
        time.sleep(0.006)
        return TRAIN_SOURCE[index]


def main(workdir, output):
    result = fit(preemption_config(), MODEL, SlowSource(), workdir, devices=jax.devices()[:1])
    with open(output, "w") as f:
        json.dump({"preempted": result.preempted, "step": int(result.state.step),
                   "history": result.history}, f)


if __name__ == "__main__":
    jax.config.update("jax_num_cpu_devices", 8)  # as tests/conftest.py: the same XLA programs
    main(sys.argv[1], sys.argv[2])
