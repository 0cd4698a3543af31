"""No non-finite state is ever saved: a run that produces one stops naming the step and keeps
the last finite checkpoint as the newest, so that a re-run resumes from it."""

import os

import jax
import numpy as np
import pytest

from deltajax.train import checkpoint as ckpt
from deltajax.train import fit
from tests.train.helpers import MODEL, TRAIN_SOURCE, nan_lr_at, tiny_config

DEVICE = jax.devices()[:1]


def _saved_steps(workdir):
    return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


def test_a_non_finite_state_is_not_saved_and_a_rerun_resumes_from_the_last_finite_one(
        tmp_path, monkeypatch):
    # The learning rate of step 4 is NaN; its loss and grad norm are finite, so only the state
    # check before the save of step 4 can see it.
    config = tiny_config(num_steps=8, checkpoint__every_steps=2, checkpoint__max_to_keep=5)
    monkeypatch.setattr("deltajax.train.schedules.from_config", nan_lr_at(4))
    with pytest.raises(FloatingPointError, match="step 4: the parameters or optimizer state"):
        fit(config, MODEL, TRAIN_SOURCE, str(tmp_path), devices=DEVICE)
    assert _saved_steps(tmp_path) == [2]
    params = ckpt.load_params(str(tmp_path / "checkpoints"), 2)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
    monkeypatch.undo()
    resumed = fit(config, MODEL, TRAIN_SOURCE, str(tmp_path), devices=DEVICE)
    assert [h["step"] for h in resumed.history] == list(range(3, 9))
    assert all(np.isfinite(h["loss"]) for h in resumed.history)


def test_a_non_finite_loss_read_a_step_late_stops_before_the_next_save(tmp_path, monkeypatch):
    # NaN state after step 8 -> NaN loss at step 9, read while step 10 (a save step) runs.
    config = tiny_config(num_steps=12, checkpoint__every_steps=5)
    monkeypatch.setattr("deltajax.train.schedules.from_config", nan_lr_at(8))
    with pytest.raises(FloatingPointError, match="step 9: loss=nan"):
        fit(config, MODEL, TRAIN_SOURCE, str(tmp_path), devices=DEVICE)
    assert _saved_steps(tmp_path) == [5]
