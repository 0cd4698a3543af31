"""TensorBoard events written by fit, read back with tensorboard's EventAccumulator; the
progress bar and the status lines a log file reads."""

import io
import json
import logging
import os
import re

import jax
import numpy as np
import pytest
import tqdm
from absl import logging as absl_logging
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from deltajax.train import fit
from deltajax.train import logging as tb
from tests.train.helpers import EVAL_SOURCE, MODEL, TRAIN_SOURCE, CrashAt, tiny_config


class _Lines(logging.Handler):
    """The messages of the absl INFO records of fit's own module."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        if record.levelno == logging.INFO and record.pathname.endswith("logging.py"):
            self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    """(result, events, status lines) of a 10-step run without a progress bar, with every
    status line due on time (the 10 s floor between lines off)."""
    workdir = tmp_path_factory.mktemp("logged")
    config = tiny_config(num_steps=10, logging__histogram_every_steps=5, eval__every_steps=10,
                         eval__num_batches=1, checkpoint__every_steps=0)
    handler, verbosity = _Lines(), absl_logging.get_verbosity()
    absl_logging.get_absl_logger().addHandler(handler)
    absl_logging.set_verbosity(absl_logging.INFO)
    floor, tb.Progress.min_interval_s = tb.Progress.min_interval_s, 0.0
    try:
        result = fit(config, MODEL, TRAIN_SOURCE, str(workdir), eval_source=EVAL_SOURCE,
                     devices=jax.devices()[:1])
    finally:
        tb.Progress.min_interval_s = floor
        absl_logging.set_verbosity(verbosity)
        absl_logging.get_absl_logger().removeHandler(handler)
    accumulator = EventAccumulator(os.path.join(workdir, "tensorboard"),
                                   size_guidance={"histograms": 0, "tensors": 0, "scalars": 0})
    return result, accumulator.Reload(), handler.lines


def test_scalars_hold_loss_accuracy_lr_grad_norm_throughput_and_step_time(events):
    result, accumulator, _ = events
    tags = accumulator.Tags()["scalars"]
    for name in ("loss", "accuracy", "lr", "grad_norm", "tokens_per_s", "step_time_s"):
        assert f"train/{name}" in tags
    losses = accumulator.Scalars("train/loss")
    assert [e.step for e in losses] == [5, 10]
    np.testing.assert_allclose(losses[-1].value, result.history[9]["loss"], rtol=1e-6)
    assert all(e.value > 0 for e in accumulator.Scalars("train/tokens_per_s"))
    assert [e.step for e in accumulator.Scalars("eval/loss")] == [10]


def test_parameter_histograms_are_written_at_the_configured_interval(events):
    _, accumulator, _ = events
    tags = accumulator.Tags()["histograms"]
    assert "params/head/kernel" in tags and "params/embed/embedding" in tags
    assert [e.step for e in accumulator.Histograms("params/head/kernel")] == [5, 10]


def test_the_config_is_logged_as_text_and_hparams(events):
    _, accumulator, _ = events
    text = accumulator.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    logged = json.loads(text.strip("`\n"))
    assert logged["num_steps"] == 10 and logged["schedule"]["name"] == "wsd"
    plugins = accumulator.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugins


def test_the_progress_bar_is_silent_when_output_is_not_a_terminal(monkeypatch, capsys):
    bar = tb.progress_bar(10, 0, enabled=True)
    assert bar.disable  # pytest captures stderr: not a TTY
    monkeypatch.setattr("sys.stderr", io.StringIO())
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    monkeypatch.setenv("CI", "true")
    assert tb.progress_bar(10, 0, enabled=True).disable
    monkeypatch.delenv("CI")
    assert not tb.progress_bar(10, 0, enabled=True).disable
    assert tb.progress_bar(10, 0, enabled=False).disable


def test_after_a_kill_and_resume_a_reader_sees_each_step_once(tmp_path):
    # Killed while reading the batch of step 9: steps 6-7 (or 8) are logged, the last
    # checkpoint is step 5.
    config = tiny_config(num_steps=10, logging__every_steps=1, data__shuffle=False)
    with pytest.raises(RuntimeError, match="killed"):
        fit(config, MODEL, CrashAt(8 * 8), str(tmp_path), devices=jax.devices()[:1])
    killed = EventAccumulator(str(tmp_path / "tensorboard")).Reload().Scalars("train/loss")
    assert [e.step for e in killed][:7] == list(range(1, 8))
    resumed = fit(config, MODEL, TRAIN_SOURCE, str(tmp_path), devices=jax.devices()[:1])
    assert resumed.history[0]["step"] == 6
    accumulator = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    losses = accumulator.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, 11))
    assert losses[6].value == np.float32(resumed.history[1]["loss"])  # the resumed step 7


def _bar(shown: bool) -> tqdm.tqdm:
    return tqdm.tqdm(total=10, disable=not shown, file=io.StringIO())


def test_without_a_bar_fit_logs_a_status_line_at_the_first_logged_and_last_steps(events):
    result, _, lines = events
    assert [int(re.match(r"step (\d+)/10 ", line)[1]) for line in lines] == [1, 5, 10]
    assert re.fullmatch(r"step 1/10 \(10.0%\): loss [\d.]+, first step [\d.]+ s "
                        r"\(with compilation\)", lines[0])
    match = re.fullmatch(r"step 5/10 \(50.0%\): loss ([\d.]+), ([\d,]+) tokens/s, "
                         r"([\d.e-]+) s/step, ETA (\d+)s", lines[1])
    assert match, lines[1]
    assert float(match[1]) == pytest.approx(result.history[4]["loss"], abs=1e-4)
    # tokens/s and s/step over steps 2-5: 8 sequences of 16 tokens a step.
    times = [h["step_time_s"] for h in result.history[1:5]]
    assert float(match[3]) == pytest.approx(np.mean(times), rel=1e-2)
    assert float(match[2].replace(",", "")) == pytest.approx(128 / np.mean(times), rel=1e-2)
    assert lines[2].startswith("step 10/10 (100.0%)") and lines[2].endswith("ETA 0s")


def test_status_lines_are_at_most_one_per_interval_besides_the_first_and_last(monkeypatch):
    monkeypatch.setattr(tb, "progress_bar", lambda *a: _bar(shown=False))
    logged = []
    monkeypatch.setattr(tb.logging, "info", lambda fmt, *args: logged.append(fmt % args))
    clock = iter(range(0, 1000, 3))  # 3 s a step
    monkeypatch.setattr(tb.time, "perf_counter", lambda: next(clock))
    progress = tb.Progress(100, 0, 30, enabled=False, every_steps=2)
    for step in range(1, 31):
        progress.update(step, {"loss": 1.0, "tokens_per_s": 10.0, "step_time_s": 3.0})
    # Every 2nd step is due, 10 s apart at the least: 1, then 6 (15 s after), 10, 14, ...
    steps = [int(re.match(r"step (\d+)/", line)[1]) for line in logged]
    assert steps == [1, 6, 10, 14, 18, 22, 26, 30]
    assert logged[1].endswith("10 tokens/s, 3 s/step, ETA 4m42s")  # 94 steps of 3 s left
    progress.close()
    assert len(logged) == 8  # the last step had its line


def test_a_run_stopped_before_its_last_step_logs_that_step_when_it_closes(monkeypatch):
    monkeypatch.setattr(tb, "progress_bar", lambda *a: _bar(shown=False))
    logged = []
    monkeypatch.setattr(tb.logging, "info", lambda fmt, *args: logged.append(fmt % args))
    progress = tb.Progress(100, 10, 100, enabled=False, every_steps=50)
    for step in (11, 12, 13):  # an early stop at step 13
        progress.update(step, {"loss": 0.5, "tokens_per_s": 4.0, "step_time_s": 2.0})
    progress.close()
    assert logged[0].startswith("step 11/100 (11.0%): loss 0.5000, first step 2.0 s")
    assert logged[1:] == ["step 13/100 (13.0%): loss 0.5000, 4 tokens/s, 2 s/step, stopped "
                          "before step 100"]


def test_the_bar_replaces_the_status_lines_and_only_process_0_logs(monkeypatch):
    logged = []
    monkeypatch.setattr(tb.logging, "info", lambda fmt, *args: logged.append(fmt % args))
    monkeypatch.setattr(tb, "progress_bar", lambda *a: _bar(shown=True))
    tb.Progress(10, 0, 10, enabled=True, every_steps=1).update(
        1, {"loss": 1.0, "tokens_per_s": 1.0, "step_time_s": 1.0})
    monkeypatch.setattr(tb, "progress_bar", lambda *a: _bar(shown=False))
    monkeypatch.setattr(tb.jax, "process_index", lambda: 1)
    tb.Progress(10, 0, 10, enabled=True, every_steps=1).update(
        1, {"loss": 1.0, "tokens_per_s": 1.0, "step_time_s": 1.0})
    assert logged == []


def test_show_status_lines_keeps_other_libraries_info_out(monkeypatch):
    verbosity = absl_logging.get_verbosity()
    try:
        tb.show_status_lines()
        tb.show_status_lines()  # idempotent: one filter
        assert absl_logging.get_verbosity() == absl_logging.INFO
        filters = [f for f in absl_logging.get_absl_handler().filters
                   if isinstance(f, tb._DeltajaxInfoOnly)]
        assert len(filters) == 1
    finally:
        absl_logging.set_verbosity(verbosity)
    record = lambda path, level: logging.LogRecord("absl", level, path, 1, "m", (), None)
    keep = filters[0].filter
    assert keep(record(tb.__file__, logging.INFO))
    orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
    assert not keep(record(orbax, logging.INFO))
    assert keep(record(orbax, logging.WARNING))
