"""Checkpoints: exact resume, damaged checkpoints skipped, failed saves lose nothing, best-K."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import logging as absl_logging

from deltajax.train import checkpoint as ckpt
from deltajax.train import fit
from deltajax.train.config import merge_with_defaults
from tests.train.helpers import EVAL_SOURCE, MODEL, TRAIN_SOURCE, tiny_config

DEVICE = jax.devices()[:1]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return fit(tiny_config(), MODEL, TRAIN_SOURCE, str(tmp_path_factory.mktemp("full")),
               devices=DEVICE)


def _assert_same_params(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_ten_steps_then_restore_then_ten_more_equal_twenty_steps_bit_for_bit(uninterrupted,
                                                                               tmp_path):
    first = fit(tiny_config(), MODEL, TRAIN_SOURCE, str(tmp_path), devices=DEVICE, stop_at=10)
    second = fit(tiny_config(), MODEL, TRAIN_SOURCE, str(tmp_path), devices=DEVICE)
    assert [h["step"] for h in first.history] == list(range(1, 11))
    assert [h["step"] for h in second.history] == list(range(11, 21))
    _assert_same_params(second.state.params, uninterrupted.state.params)
    _assert_same_params(second.state.opt_state, uninterrupted.state.opt_state)
    for resumed, straight in zip(first.history + second.history, uninterrupted.history,
                                 strict=True):
        for name in ("loss", "accuracy", "grad_norm", "lr"):
            assert resumed[name] == straight[name], (resumed["step"], name)


def test_keeps_only_the_last_k_checkpoints(uninterrupted, tmp_path):
    fit(tiny_config(), MODEL, TRAIN_SOURCE, str(tmp_path), devices=DEVICE)
    steps = sorted(int(name) for name in os.listdir(tmp_path / "checkpoints") if name.isdigit())
    assert steps == [15, 20]


def _damage(step_dir, item):
    """Truncate every data file of one item of a step (its metadata stays readable)."""
    for root, _, files in os.walk(step_dir / item):
        for name in files:
            if not name.startswith("_"):
                open(os.path.join(root, name), "wb").close()


@pytest.mark.parametrize("item", ["state", "data"])
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_previous_one_resumed_bit_for_bit(
        uninterrupted, tmp_path, caplog, item):
    """The fallback restores the state and the data position of the same step: the run equals
    an uninterrupted one (a damaged iterator position discards its step's good state too)."""
    fit(tiny_config(), MODEL, TRAIN_SOURCE, str(tmp_path), devices=DEVICE, stop_at=10)
    _damage(tmp_path / "checkpoints" / "10", item)
    half_written = tmp_path / "checkpoints" / "15.orbax-checkpoint-tmp-1"
    half_written.mkdir()
    absl_logging.get_absl_logger().propagate = True
    with caplog.at_level("WARNING"):
        resumed = fit(tiny_config(), MODEL, TRAIN_SOURCE, str(tmp_path), devices=DEVICE)
    assert "step 10" in caplog.text and "cannot be read" in caplog.text
    assert [h["step"] for h in resumed.history] == list(range(6, 21))  # restarted after step 5
    assert (tmp_path / "checkpoints" / f"{ckpt.CORRUPT_PREFIX}10").is_dir()  # kept, not deleted
    assert half_written.is_dir()
    _assert_same_params(resumed.state.params, uninterrupted.state.params)
    for got, want in zip(resumed.history, uninterrupted.history[5:], strict=True):
        assert got["loss"] == want["loss"], got["step"]


def test_a_failed_save_leaves_the_earlier_checkpoints_restorable(tmp_path):
    config = merge_with_defaults(tiny_config())
    fit(config, MODEL, TRAIN_SOURCE, str(tmp_path), devices=DEVICE, stop_at=10)
    manager = ckpt.make_manager(str(tmp_path / "checkpoints"), config)
    state = fit(config, MODEL, TRAIN_SOURCE, str(tmp_path / "other"), devices=DEVICE,
                stop_at=1).state

    class BrokenIterator:
        def get_state(self):
            raise OSError("disk full")

    with pytest.raises(Exception, match="disk full"):
        ckpt.save(manager, 15, state, BrokenIterator())
        manager.wait_until_finished()
    manager.reload()
    assert manager.all_steps() == [5, 10]
    restored = ckpt.restore_latest(manager, ckpt.abstract_like(state), None)
    assert int(restored.step) == 10
    manager.close()


def test_best_checkpoints_are_kept_by_the_configured_metric(tmp_path):
    config = tiny_config(eval__every_steps=5, eval__num_batches=2,
                         checkpoint__best_metric="eval/loss", checkpoint__max_to_keep=1)
    result = fit(config, MODEL, TRAIN_SOURCE, str(tmp_path), devices=DEVICE,
                 eval_source=EVAL_SOURCE)
    manager = ocp.CheckpointManager(str(tmp_path / "checkpoints_best"))
    best = manager.all_steps()
    assert len(best) == 1 and best[0] in (5, 10, 15, 20)
    assert result.eval_metrics and np.isfinite(result.eval_metrics["eval/loss"])
    manager.close()


def test_restore_dir_that_does_not_exist_is_rejected_before_training(tmp_path):
    config = tiny_config(checkpoint__restore_dir=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="config.checkpoint.restore_dir"):
        fit(config, MODEL, TRAIN_SOURCE, str(tmp_path / "run"), devices=DEVICE)
    assert not (tmp_path / "run").exists()


def test_wsm_merges_the_last_saved_checkpoints_with_the_decay_coefficients(tmp_path):
    config = tiny_config(num_steps=8, schedule__name="wsm", schedule__warmup_steps=2,
                         checkpoint__every_steps=2, checkpoint__max_to_keep=4)
    result = fit(config, MODEL, TRAIN_SOURCE, str(tmp_path), devices=DEVICE)
    np.testing.assert_allclose([h["lr"] for h in result.history][2:], 3e-3)  # no decay
    w = [1.0, 0.6, 0.2]
    merged, steps = ckpt.merge_saved_checkpoints(str(tmp_path / "checkpoints"), w)
    assert steps == [2, 4, 6, 8]
    saved = [ckpt.load_params(str(tmp_path / "checkpoints"), s) for s in steps]
    c = [0.0, 0.4, 0.4, 0.2]
    expected = jax.tree.map(lambda *xs: sum(ci * x for ci, x in zip(c, xs, strict=True)), *saved)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 merged, expected)
    _assert_same_params(saved[-1], result.state.params)
    with pytest.raises(ValueError, match="needs 5"):
        ckpt.merge_saved_checkpoints(str(tmp_path / "checkpoints"), [1.0, 0.8, 0.5, 0.2])


def test_a_non_finite_loss_stops_training_and_keeps_the_saved_checkpoints(tmp_path):
    config = tiny_config(optimizer__learning_rate=1e30, checkpoint__every_steps=1)
    with pytest.raises(FloatingPointError, match="step"):
        fit(config, MODEL, TRAIN_SOURCE, str(tmp_path), devices=DEVICE)
    steps = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
    assert steps and len(steps) <= 2
    manager = ckpt.make_manager(str(tmp_path / "checkpoints"), merge_with_defaults(config))
    restored = manager.restore(steps[-1], args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored["params"]))
    manager.close()
