"""Shared small settings for the trainer tests: a config, sources and a model, all tiny."""

import ml_collections

from deltajax.data import CopySource
from deltajax.train.testing import TinyLM

VOCAB, SEQ_LEN = 12, 16
TRAIN_SOURCE = CopySource(num_examples=256, seq_len=SEQ_LEN, vocab_size=VOCAB, seed=0)
EVAL_SOURCE = CopySource(num_examples=32, seq_len=SEQ_LEN, vocab_size=VOCAB, seed=1)
MODEL = TinyLM(VOCAB)


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """20 steps of batch 8 with a decaying schedule (so the step count matters on resume)."""
    config = ml_collections.ConfigDict()
    config.num_steps = 20
    config.global_batch_size = 8
    config.optimizer = ml_collections.ConfigDict({"learning_rate": 3e-3})
    config.schedule = ml_collections.ConfigDict({"name": "wsd", "warmup_steps": 3})
    config.checkpoint = ml_collections.ConfigDict({"every_steps": 5, "max_to_keep": 2})
    config.logging = ml_collections.ConfigDict({"every_steps": 5, "progress_bar": False})
    for key, value in overrides.items():
        section, _, field = key.rpartition("__")
        target = config
        if section:
            if section not in config:
                config[section] = ml_collections.ConfigDict()
            target = config[section]
        target[field] = value
    return config



def nan_lr_at(step: int):
    """A schedules.from_config (monkeypatch deltajax.train.schedules.from_config) whose
    learning rate is NaN at `step` only: that step's loss and gradient are finite, the state
    after it is not; the optimizer state's structure is the usual one."""
    import jax.numpy as jnp

    from deltajax.train import schedules

    from_config = schedules.from_config

    def make(config):
        schedule = from_config(config)
        return lambda count: jnp.where(count == step - 1, jnp.nan, schedule(count))

    return make


class CrashAt:
    """TRAIN_SOURCE that raises when grain's threads read example `index`: a run killed mid-way
    (with data__shuffle=False, example i is in the batch of step i // batch + 1). Reads on the
    main thread (fit's checks before training) pass."""

    def __init__(self, index: int):
        self._index = index

    def __len__(self):
        return len(TRAIN_SOURCE)

    def __getitem__(self, index):
        import threading

        if index == self._index and threading.current_thread() is not threading.main_thread():
            raise RuntimeError(f"killed while reading example {index}")
        return TRAIN_SOURCE[index]
