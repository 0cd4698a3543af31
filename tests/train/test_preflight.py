"""check_run: what needs more than the config fails before any device work or file, by name."""

import logging
import math
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from deltajax.data import CopySource, make_dataset
from deltajax.train import fit, preflight
from deltajax.train.preflight import batches_per_host, check_run
from deltajax.train.testing import TinyLM
from tests.train.helpers import EVAL_SOURCE, MODEL, TRAIN_SOURCE, VOCAB, tiny_config


def _check(config, model=MODEL, train=TRAIN_SOURCE, eval_source=EVAL_SOURCE, processes=1):
    check_run(config, model, train, eval_source, num_devices=processes, num_processes=processes)


def _error(*args, **kwargs) -> str:
    with pytest.raises(ValueError) as error:
        _check(*args, **kwargs)
    return str(error.value)


def test_a_good_run_passes_and_nothing_is_written(tmp_path):
    before = os.listdir(tmp_path)
    _check(tiny_config(eval__every_steps=5, eval__num_batches=4, data__num_epochs=1))
    assert os.listdir(tmp_path) == before


def test_it_runs_validate_config_first():
    message = _error(tiny_config(optimizer__learning_rate=math.nan))
    assert "config.optimizer.learning_rate" in message


def test_a_model_vocabulary_smaller_than_the_train_tokens_is_refused():
    message = _error(tiny_config(), model=TinyLM(VOCAB - 4))
    assert "train_source[" in message and f"[0, {VOCAB - 4})" in message
    assert "vocab_size of at least" in message


def test_the_eval_tokens_are_checked_when_the_run_evaluates():
    wide = CopySource(num_examples=32, seq_len=16, vocab_size=VOCAB + 8, seed=1)
    _check(tiny_config(), eval_source=wide)  # eval.every_steps = 0: never read
    message = _error(tiny_config(eval__every_steps=5), eval_source=wide)
    assert "eval_source[" in message and f"[0, {VOCAB})" in message


def test_a_negative_token_is_refused_but_masked_targets_pass():
    row = {"inputs": np.arange(16, dtype=np.int32) % VOCAB,
           "targets": np.full(16, -100, np.int32)}
    _check(tiny_config(), train=[row] * 8, eval_source=None)
    bad = [row] * 7 + [dict(row, inputs=np.full(16, -100, np.int32))]
    assert "train_source[7]['inputs'] holds token id -100" in _error(
        tiny_config(), train=bad, eval_source=None)


def test_a_large_source_is_sampled_first_and_last_included(monkeypatch):
    monkeypatch.setattr(preflight, "MAX_SCANNED_EXAMPLES", 4)
    row = {"inputs": np.zeros(16, np.int32), "targets": np.zeros(16, np.int32)}
    rows = [row] * 20 + [dict(row, targets=np.full(16, VOCAB, np.int32))]
    assert "train_source[20]['targets']" in _error(tiny_config(), train=rows, eval_source=None)


@pytest.mark.parametrize("examples, epochs, batch, processes", [
    (256, 1, 8, 1), (40, 3, 6, 1), (41, 2, 6, 2), (40, 3, 6, 3), (7, 5, 4, 2)])
def test_batches_per_host_counts_what_the_pipeline_yields(examples, epochs, batch, processes):
    source = CopySource(num_examples=examples, seq_len=4, vocab_size=5)
    fewest = min(len(make_dataset(source, seed=0, global_batch_size=batch, num_epochs=epochs,
                                  process_index=i, process_count=processes))
                 for i in range(processes))
    assert batches_per_host(examples, epochs, batch, processes) == fewest


def test_too_few_epochs_for_num_steps_is_refused_naming_the_epochs_needed():
    message = _error(tiny_config(num_steps=40, data__num_epochs=1))  # 256 / 8 = 32 batches
    assert "config.data.num_epochs=1" in message and "config.num_steps=40" in message
    assert "num_epochs >= 2" in message
    _check(tiny_config(num_steps=40, data__num_epochs=2))


def test_an_eval_set_smaller_than_a_batch_is_refused_when_the_run_evaluates():
    config = tiny_config(global_batch_size=64, eval__every_steps=5)
    message = _error(config)  # EVAL_SOURCE holds 32
    assert "eval_source has 32 examples" in message and "config.global_batch_size=64" in message
    _check(tiny_config(global_batch_size=64))  # no evaluation: not read


def test_fewer_eval_batches_than_asked_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        _check(tiny_config(eval__every_steps=5, eval__num_batches=10))
    assert "config.eval.num_batches=10" in caplog.text and "uses those 4" in caplog.text


def _save_a_step(directory):
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    with ocp.CheckpointManager(directory, item_names=("state",), options=options) as manager:
        manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(
            {"x": np.zeros(2, np.float32)})))


def test_a_restore_dir_without_a_checkpoint_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    message = _error(tiny_config(checkpoint__restore_dir=str(empty)))
    assert "config.checkpoint.restore_dir" in message and "no finished checkpoint" in message
    _save_a_step(str(tmp_path / "run" / "checkpoints"))
    message = _error(tiny_config(checkpoint__restore_dir=str(tmp_path / "run")))
    assert "set it to" in message and "checkpoints" in message  # the workdir, not its folder
    _check(tiny_config(checkpoint__restore_dir=str(tmp_path / "run" / "checkpoints")))


def test_fit_refuses_a_too_small_vocabulary_before_writing_anything(tmp_path):
    with pytest.raises(ValueError, match="vocab_size of at least"):
        fit(tiny_config(), TinyLM(VOCAB - 4), TRAIN_SOURCE, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_fit_refuses_data_that_runs_out_before_writing_anything(tmp_path):
    with pytest.raises(ValueError, match="config.data.num_epochs"):
        fit(tiny_config(num_steps=40, data__num_epochs=1), MODEL, TRAIN_SOURCE,
            str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
