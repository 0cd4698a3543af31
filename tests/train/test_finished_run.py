"""A finished or early-stopped run, re-run, returns its final result without training more."""

import json
import os

import jax
import numpy as np

from deltajax.train import fit, run_record
from tests.train.helpers import EVAL_SOURCE, MODEL, TRAIN_SOURCE, tiny_config

DEVICE = jax.devices()[:1]


def _saved_steps(workdir):
    return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


def test_rerunning_a_finished_run_returns_its_history_and_eval_metrics(tmp_path):
    config = tiny_config(num_steps=10, eval__every_steps=5, eval__num_batches=1)
    fit(config, MODEL, TRAIN_SOURCE, str(tmp_path), eval_source=EVAL_SOURCE, devices=DEVICE,
        stop_at=5)
    finished = fit(config, MODEL, TRAIN_SOURCE, str(tmp_path), eval_source=EVAL_SOURCE,
                   devices=DEVICE)
    again = fit(config, MODEL, TRAIN_SOURCE, str(tmp_path), eval_source=EVAL_SOURCE,
                devices=DEVICE)
    assert [h["step"] for h in again.history] == list(range(1, 11))
    assert again.history[-5:] == finished.history and len(finished.history) == 5
    assert again.history[-1]["loss"] == finished.history[-1]["loss"]  # the README's snippet
    assert again.eval_metrics == finished.eval_metrics and again.eval_metrics
    assert [e["step"] for e in again.eval_history] == [5, 10]
    assert int(again.state.step) == 10 and not again.stopped_early
    jax.tree.map(np.testing.assert_array_equal, again.state.params, finished.state.params)


def test_rerunning_an_early_stopped_run_returns_its_result_without_training_on(tmp_path):
    config = tiny_config(eval__every_steps=5, eval__num_batches=1,
                         eval__early_stop_metric="eval/loss", eval__early_stop_value=1e3,
                         eval__early_stop_mode="min")
    stopped = fit(config, MODEL, TRAIN_SOURCE, str(tmp_path), eval_source=EVAL_SOURCE,
                  devices=DEVICE)
    again = fit(config, MODEL, TRAIN_SOURCE, str(tmp_path), eval_source=EVAL_SOURCE,
                devices=DEVICE)
    assert stopped.stopped_early and again.stopped_early
    assert _saved_steps(tmp_path) == [5]
    assert again.history == stopped.history and again.eval_metrics == stopped.eval_metrics
    assert int(again.state.step) == 5
    # A config whose early stop the saved metrics no longer meet trains on.
    config.eval.early_stop_value = 1e-9
    more = fit(config, MODEL, TRAIN_SOURCE, str(tmp_path), eval_source=EVAL_SOURCE,
               devices=DEVICE, stop_at=6)
    assert [h["step"] for h in more.history] == [6]


def test_metrics_logged_past_the_checkpoint_a_run_resumes_from_are_dropped(tmp_path):
    # As a kill between the start of the save of step 4 and its completion leaves them.
    config = tiny_config(num_steps=6, checkpoint__every_steps=2)
    fit(config, MODEL, TRAIN_SOURCE, str(tmp_path), devices=DEVICE, stop_at=2)
    lines = (tmp_path / run_record.HISTORY).read_text().splitlines()
    late = [json.dumps({**json.loads(lines[-1]), "step": s}) for s in (3, 4)]
    (tmp_path / run_record.HISTORY).write_text("\n".join(lines + late) + "\n")
    resumed = fit(config, MODEL, TRAIN_SOURCE, str(tmp_path), devices=DEVICE)
    again = fit(config, MODEL, TRAIN_SOURCE, str(tmp_path), devices=DEVICE)
    assert [h["step"] for h in again.history] == list(range(1, 7))
    assert again.history[2:] == resumed.history


def test_a_history_line_cut_short_by_a_kill_is_dropped_and_later_lines_are_read(tmp_path):
    (tmp_path / run_record.HISTORY).write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    record = run_record.RunRecord(str(tmp_path), start=2)
    assert record.prior_history == [{"step": 1, "loss": 2.0}]
    record.add({"step": 2, "loss": 1.5})
    record.write(2, [], {}, False, ended=True)
    again = run_record.RunRecord(str(tmp_path), start=2)
    assert [h["step"] for h in again.prior_history] == [1, 2]
    assert again.prior_summary["ended"] and not again.logged_past_start
