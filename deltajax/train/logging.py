"""TensorBoard event files (tensorboardX), the progress bar and the status lines a log file
reads. Only process 0 writes."""

import logging as py_logging
import os
import sys
import time
from typing import Optional

import jax
import numpy as np
import tqdm
from absl import logging
from tensorboardX import SummaryWriter
from tensorboardX.summary import hparams


def make_writer(logdir: str, purge_step: Optional[int] = None) -> Optional[SummaryWriter]:
    """A SummaryWriter on process 0; None elsewhere, so hosts don't write duplicate events.

    purge_step (a resumed run's first step): readers (TensorBoard) discard the events of that
    step and later ones written before, by a run that went past its last checkpoint."""
    if jax.process_index() != 0:
        return None
    # tensorboardX names files by the second: a unique suffix keeps a writer opened in the same
    # second (a quick resume) from overwriting the last one's file, and sorts after it.
    return SummaryWriter(logdir, purge_step=purge_step, filename_suffix=f".{time.time_ns()}")


def write_scalars(writer: Optional[SummaryWriter], step: int, scalars: dict) -> None:
    if writer is None:
        return
    for name, value in scalars.items():
        writer.add_scalar(name, float(value), step)


def write_histograms(writer: Optional[SummaryWriter], step: int, params) -> None:
    """One histogram per parameter, tagged params/<module>/<name>."""
    if writer is None:
        return
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        writer.add_histogram(f"params/{name}", np.asarray(jax.device_get(leaf), np.float32), step)


def write_config(writer: Optional[SummaryWriter], config, metric_names=("train/loss",)) -> None:
    """The config as JSON text, and its scalar fields as hparams (for the HParams dashboard)."""
    if writer is None:
        return
    writer.add_text("config", "```\n" + config.to_json_best_effort(indent=2) + "\n```", 0)
    flat = {k: v for k, v in _flatten(config.to_dict()).items()
            if isinstance(v, (bool, int, float, str))}
    # Written into this run's own directory, not the sub-run add_hparams would create.
    for summary in hparams(flat, {name: 0.0 for name in metric_names}):
        writer.file_writer.add_summary(summary)


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def progress_bar(total: int, initial: int, enabled: bool) -> tqdm.tqdm:
    """A tqdm bar on process 0 of an interactive terminal; silent in CI and in log files."""
    show = (enabled and jax.process_index() == 0 and sys.stderr.isatty()
            and not os.environ.get("CI"))
    return tqdm.tqdm(total=total, initial=initial, disable=not show, unit="step",
                     dynamic_ncols=True)


class Progress:
    """A run's progress as fit reports it: the tqdm bar where one is shown (progress_bar), else
    (a log file, CI, a notebook, config.logging.progress_bar=False) one absl INFO line

        step 1200/25000 (4.8%): loss 2.3456, 15,234 tokens/s, 0.071 s/step, ETA 28m10s

    at the first step of the call, at the steps where the train scalars are written (multiples
    of every_steps; at most one per min_interval_s, as tqdm's mininterval, so that a fast run's
    log stays readable), and at the last (`end`, or the step a run stopped at). tokens/s and
    s/step are since the previous line, evaluations and saves included, so the ETA (to `total`)
    counts them; the first step's line gives its time alone (compilation). Process 0 only."""

    min_interval_s = 10.0

    def __init__(self, total: int, initial: int, end: int, *, enabled: bool, every_steps: int):
        self._bar = progress_bar(total, initial, enabled)
        self._lines = self._bar.disable and jax.process_index() == 0
        self._total, self._first, self._end, self._every = total, initial + 1, end, every_steps
        self._last_line = time.perf_counter()
        self._tokens = self._seconds = 0.0
        self._steps = 0

    def update(self, step: int, metrics: dict) -> None:
        """After `step` with its host metrics (loss, tokens_per_s, step_time_s)."""
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{metrics['loss']:.4f}",
                              tok_s=f"{metrics['tokens_per_s']:.0f}")
        if not self._lines:
            return
        self._tokens += metrics["tokens_per_s"] * metrics["step_time_s"]
        self._seconds += metrics["step_time_s"]
        self._steps += 1
        self._last = (step, metrics["loss"])
        now = time.perf_counter()
        due = (step % self._every == 0 and now - self._last_line >= self.min_interval_s)
        if step == self._first:
            logging.info("%s, first step %.1f s (with compilation)", self._head(), self._seconds)
        elif step == self._end or due:
            per_step = self._seconds / self._steps
            self._log(f"ETA {_duration(per_step * (self._total - step))}")
        else:
            return
        self._last_line, self._tokens, self._seconds, self._steps = now, 0.0, 0.0, 0

    def close(self) -> None:
        """Ends the bar; a run stopped before its last step (early stop, preemption, an error)
        logs that step's line too."""
        self._bar.close()
        if self._lines and self._steps:
            self._log(f"stopped before step {self._end}")
            self._steps = 0

    def _head(self) -> str:
        step, loss = self._last
        return f"step {step}/{self._total} ({100 * step / self._total:.1f}%): loss {loss:.4f}"

    def _log(self, tail: str) -> None:
        logging.info("%s, %s tokens/s, %.3g s/step, %s", self._head(),
                     f"{self._tokens / self._seconds:,.0f}", self._seconds / self._steps, tail)


def _duration(seconds: float) -> str:
    """'1h02m', '28m10s', '42s'."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def show_status_lines() -> None:
    """Shows deltajax's absl INFO lines (fit's status, below) on stderr, and keeps the other
    libraries' INFO out: orbax logs every save at INFO. The study scripts call it; a notebook
    may, to see fit's progress without a terminal."""
    logging.set_verbosity(logging.INFO)
    logging.use_absl_handler()
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _DeltajaxInfoOnly) for f in handler.filters):
        handler.addFilter(_DeltajaxInfoOnly())


class _DeltajaxInfoOnly(py_logging.Filter):
    """Warnings and errors of every library; INFO and below from deltajax's own files only."""

    _package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

    def filter(self, record: py_logging.LogRecord) -> bool:
        return (record.levelno >= py_logging.WARNING
                or os.path.abspath(record.pathname).startswith(self._package))
