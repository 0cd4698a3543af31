"""TensorBoard events written by fit, read back with tensorboard's EventAccumulator."""

import io
import json
import os

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from deltajax.train import fit
from deltajax.train import logging as tb
from tests.train.helpers import EVAL_SOURCE, MODEL, TRAIN_SOURCE, CrashAt, tiny_config


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("logged")
    config = tiny_config(num_steps=10, logging__histogram_every_steps=5, eval__every_steps=10,
                         eval__num_batches=1, checkpoint__every_steps=0)
    result = fit(config, MODEL, TRAIN_SOURCE, str(workdir), eval_source=EVAL_SOURCE,
                 devices=jax.devices()[:1])
    accumulator = EventAccumulator(os.path.join(workdir, "tensorboard"),
                                   size_guidance={"histograms": 0, "tensors": 0, "scalars": 0})
    return result, accumulator.Reload()


def test_scalars_hold_loss_accuracy_lr_grad_norm_throughput_and_step_time(events):
    result, accumulator = events
    tags = accumulator.Tags()["scalars"]
    for name in ("loss", "accuracy", "lr", "grad_norm", "tokens_per_s", "step_time_s"):
        assert f"train/{name}" in tags
    losses = accumulator.Scalars("train/loss")
    assert [e.step for e in losses] == [5, 10]
    np.testing.assert_allclose(losses[-1].value, result.history[9]["loss"], rtol=1e-6)
    assert all(e.value > 0 for e in accumulator.Scalars("train/tokens_per_s"))
    assert [e.step for e in accumulator.Scalars("eval/loss")] == [10]


def test_parameter_histograms_are_written_at_the_configured_interval(events):
    _, accumulator = events
    tags = accumulator.Tags()["histograms"]
    assert "params/head/kernel" in tags and "params/embed/embedding" in tags
    assert [e.step for e in accumulator.Histograms("params/head/kernel")] == [5, 10]


def test_the_config_is_logged_as_text_and_hparams(events):
    _, accumulator = events
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
