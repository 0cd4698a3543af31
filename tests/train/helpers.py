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
