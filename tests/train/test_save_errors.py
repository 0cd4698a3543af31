"""A failed asynchronous save (disk full) is reported at the next step, once and short: the
step, the directory and the cause; the checkpoints saved before it stay restorable."""

import errno
import os
import time
import traceback

import jax
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from deltajax.train import fit
from deltajax.train.saver import SaveError
from tests.train.helpers import MODEL, TRAIN_SOURCE, tiny_config


class _SlowSource:
    """TRAIN_SOURCE at ~15 ms a step: the failed save's thread ends well before the next save."""

    def __len__(self):
        return len(TRAIN_SOURCE)

    def __getitem__(self, index):
        time.sleep(0.004)
        return TRAIN_SOURCE[index]


def test_a_save_that_fails_in_the_background_stops_the_run_at_once_with_one_line(
        tmp_path, monkeypatch):
    rename = os.rename

    def disk_full_at_step_20(src, dst, *args, **kwargs):
        # orbax's background thread renames <step>.orbax-checkpoint-tmp-* to <step> last.
        if os.path.basename(str(dst)) == "20" and "orbax-checkpoint-tmp" in str(src):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        return rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", disk_full_at_step_20)
    config = tiny_config(num_steps=40, checkpoint__every_steps=10, logging__every_steps=1,
                         checkpoint__async_save=True)
    with pytest.raises(SaveError) as caught:
        fit(config, MODEL, _SlowSource(), str(tmp_path), devices=jax.devices()[:1])
    message = str(caught.value)
    directory = str(tmp_path / "checkpoints")
    assert message.startswith(f"saving the checkpoint of step 20 to {directory} failed "
                              "(OSError: [Errno 28] No space left on device")
    assert "\n" not in message
    printed = "".join(traceback.format_exception(caught.value))
    assert "During handling" not in printed and "direct cause" not in printed
    monkeypatch.undo()
    assert sorted(n for n in os.listdir(tmp_path / "checkpoints") if n.isdigit()) == ["10"]
    logged = EventAccumulator(str(tmp_path / "tensorboard")).Reload().Scalars("train/loss")
    assert logged[-1].step < 30  # stopped before the next save, not when it waited on this one
    resumed = fit(config, MODEL, TRAIN_SOURCE, str(tmp_path), devices=jax.devices()[:1],
                  stop_at=11)
    assert [h["step"] for h in resumed.history] == [11]
