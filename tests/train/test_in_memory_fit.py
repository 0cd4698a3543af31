"""fit with config.data.in_memory trains on grain's batches and resumes from its checkpoints."""

import jax
import numpy as np

from deltajax.data import InMemoryIterator
from deltajax.train import fit
from tests.train.helpers import MODEL, TRAIN_SOURCE, tiny_config

DEVICE = jax.devices()[:1]


def _config(in_memory: bool):
    # 256 examples in batches of 16: the 20 steps cross into a second, reshuffled epoch.
    return tiny_config(global_batch_size=16, data__in_memory=in_memory)


def test_in_memory_run_killed_and_resumed_equals_an_uninterrupted_grain_run(tmp_path,
                                                                             monkeypatch):
    read = []
    batch = InMemoryIterator.batch
    monkeypatch.setattr(InMemoryIterator, "batch", lambda self, step: read.append(step) or
                        batch(self, step))
    grained = fit(_config(False), MODEL, TRAIN_SOURCE, str(tmp_path / "grain"), devices=DEVICE)
    first = fit(_config(True), MODEL, TRAIN_SOURCE, str(tmp_path / "memory"), devices=DEVICE,
                stop_at=10)
    second = fit(_config(True), MODEL, TRAIN_SOURCE, str(tmp_path / "memory"), devices=DEVICE)
    assert [h["step"] for h in first.history + second.history] == list(range(1, 21))
    assert read[:20] == list(range(20))  # the in-memory path fed every step, resumed at 10
    for resumed, straight in zip(first.history + second.history, grained.history, strict=True):
        assert resumed["loss"] == straight["loss"], resumed["step"]
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 second.state.params, grained.state.params)
