"""TensorBoard event files (tensorboardX) and the progress bar. Only process 0 writes."""

import os
import sys
import time
from typing import Optional

import jax
import numpy as np
import tqdm
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
