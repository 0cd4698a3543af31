r"""Grokking on modular arithmetic with deltajax's LMs and trainer (Nanda et al. 2023, Power et al.
2022), with softmax attention or a delta-rule mixer.

    python -m experiments.grokking_modular --config=configs/grokking.py:nanda
    python -m experiments.grokking_modular --config=configs/grokking.py:cpu,mixer \
        --workdir=runs/grokking-mixer --out=benchmarks/results/cpu-grokking-mixer

(`python experiments/grokking_modular.py ...` runs the same.) Each run trains in
<workdir>/runs/<run name>/ (checkpoints, TensorBoard, curves.json) and resumes there. fit() saves
a checkpoint every task.eval_every steps; between calls of fit(stop_at=...) the new checkpoints
are read back and evaluated on the whole train and test splits (the trainer's own evaluation
sees whole batches only, and records no weight norm).
"""

import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np

from deltajax import study
from deltajax.analysis import first_step_above, fourier_spectrum, top_frequencies
from deltajax.data.modular import modular_split, vocab_size
from deltajax.models import LanguageModel, ModelConfig
from deltajax.train import checkpoint as ckpt
from deltajax.train import logging as tb
from deltajax.train import loss as loss_lib
from deltajax.train import step as step_lib
from deltajax.train.trainer import fit

matplotlib.use("Agg")  # files only; no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def make_splits(config):
    t = config.task
    return modular_split(t.p, t.operation, t.train_fraction, seed=t.split_seed)


def build_model(config) -> LanguageModel:
    return LanguageModel(ModelConfig(vocab_size=vocab_size(config.task.p),
                                     **config.model.to_dict()))


def trainer_config(config, n_train: int) -> ml_collections.ConfigDict:
    """config.train for fit(): global_batch_size 0 becomes n_train (full batch), and a
    checkpoint every task.eval_every steps, all of one segment kept until analysed."""
    t = config.task
    if t.eval_every < 1 or t.segment_steps % t.eval_every:
        raise ValueError(f"config.task.segment_steps={t.segment_steps} must be a multiple of "
                         f"config.task.eval_every={t.eval_every} >= 1")
    trainer = ml_collections.ConfigDict(config.train.to_dict())
    trainer.seed = config.seed
    if trainer.global_batch_size == 0:
        trainer.global_batch_size = n_train
    trainer.checkpoint = dict(every_steps=t.eval_every,
                              max_to_keep=t.segment_steps // t.eval_every + 1)
    return trainer


class _Evaluator:
    """Loss, accuracy and weight norm of saved params on the whole train and test splits."""

    def __init__(self, model, train, test):
        self._splits = {"train": jax.tree.map(jnp.asarray, train.arrays()),
                        "test": jax.tree.map(jnp.asarray, test.arrays())}
        self._eval = jax.jit(lambda params, batch: loss_lib.means(
            step_lib.eval_step(params, batch, model=model)))

    def __call__(self, params, p: int, top_k: int) -> dict:
        row = {}
        for name, batch in self._splits.items():
            metrics = jax.device_get(self._eval(params, batch))
            row[f"{name}_loss"] = float(metrics["loss"])
            row[f"{name}_accuracy"] = float(metrics["accuracy"])
        row["weight_norm"] = float(step_lib.global_norm(params))
        _, row["fourier_top_share"] = top_frequencies(embedding_spectrum(params, p), top_k)
        return row


def embedding_spectrum(params, p: int) -> np.ndarray:
    """Fourier spectrum of the residue rows of the token embedding: [p // 2 + 1]."""
    return fourier_spectrum(np.asarray(params["embed"]["embedding"])[:p])


def _grokked(curves: dict, threshold: float, margin: int) -> bool:
    steps = sorted(int(s) for s in curves["eval"])
    if not steps:
        return False
    accuracy = [curves["eval"][str(s)]["test_accuracy"] for s in steps]
    first = first_step_above(steps, accuracy, threshold)
    return first is not None and steps[-1] >= first + margin


def train_and_evaluate(config, workdir: str, *, devices=None,
                       log=study.log) -> dict:
    """Train until test accuracy has passed task.threshold for task.stop_after_grok steps (or
    num_steps), resuming from workdir; returns the run's summary. devices: fit's (default
    all)."""
    os.makedirs(workdir, exist_ok=True)
    train, test = make_splits(config)
    model = build_model(config)
    trainer = trainer_config(config, train.num_examples)
    s, p = config.task, config.task.p
    evaluator = _Evaluator(model, train, test)
    curves_path = os.path.join(workdir, "curves.json")
    curves = study.read_json(curves_path, {"eval": {}, "train": {}, "wall_s": 0.0})
    ckpt_dir = os.path.join(workdir, "checkpoints")
    # Its own folder: fit's writer in tensorboard/ purges steps after a resume point, which
    # would hide this writer's later events if they shared a folder.
    writer = tb.make_writer(os.path.join(workdir, "tensorboard", "grokking"))
    done = max((int(k) for k in curves["eval"]), default=0)
    try:
        while done < trainer.num_steps and not _grokked(curves, s.threshold, s.stop_after_grok):
            start = time.perf_counter()
            result = fit(trainer, model, train, workdir, devices=devices,
                         stop_at=min(done + s.segment_steps, trainer.num_steps))
            for h in result.history:  # accuracy of the step's forward pass, before its update
                curves["train"][str(h["step"])] = [h["loss"], h["accuracy"]]
            for step in sorted(x for x in _saved_steps(ckpt_dir) if x > done):
                row = evaluator(ckpt.load_params(ckpt_dir, step), p, s.spectrum_top_k)
                curves["eval"][str(step)] = row
                tb.write_scalars(writer, step, {f"grokking/{k}": v for k, v in row.items()})
                done = step
            curves["wall_s"] += time.perf_counter() - start
            study.write_json(curves_path, curves)
            last = curves["eval"].get(str(done), {})
            if result.preempted:
                raise study.Preempted(f"{workdir}: preempted after step {done} (saved and "
                                      "evaluated); run the same command again to resume")
            log(f"{workdir}: step {done} train_acc {last.get('train_accuracy', 0):.3f} "
                f"test_acc {last.get('test_accuracy', 0):.3f} ({curves['wall_s']:.0f} s)")
    finally:
        if writer is not None:
            writer.close()
    return summarise(config, curves, train.num_examples,
                     embedding_spectrum(ckpt.load_params(ckpt_dir, done), p))


def _saved_steps(ckpt_dir: str) -> list:
    return [int(name) for name in os.listdir(ckpt_dir) if name.isdigit()] if os.path.isdir(
        ckpt_dir) else []


def summarise(config, curves: dict, n_train: int, spectrum_K: np.ndarray) -> dict:
    """Grokking delay (first steps above task.threshold), final metrics, key frequencies."""
    threshold = config.task.threshold
    train_steps = sorted(int(k) for k in curves["train"])
    eval_steps = sorted(int(k) for k in curves["eval"])
    train_acc = [curves["train"][str(k)][1] for k in train_steps]
    test_acc = [curves["eval"][str(k)]["test_accuracy"] for k in eval_steps]
    train_99 = first_step_above(train_steps, train_acc, threshold) if train_steps else None
    test_99 = first_step_above(eval_steps, test_acc, threshold) if eval_steps else None
    frequencies, share = top_frequencies(spectrum_K, config.task.spectrum_top_k)
    last = curves["eval"][str(eval_steps[-1])]
    return {
        "mixer": config.model.mixer, "p": config.task.p, "operation": config.task.operation,
        "train_fraction": config.task.train_fraction, "n_train": n_train,
        "weight_decay": config.train.optimizer.weight_decay, "steps": eval_steps[-1],
        "train_step_99": train_99, "test_step_99": test_99,
        "delay": None if train_99 is None or test_99 is None else test_99 - train_99,
        "final_train_accuracy": last["train_accuracy"],
        "final_test_accuracy": last["test_accuracy"], "final_weight_norm": last["weight_norm"],
        "key_frequencies": [int(k) for k in frequencies], "key_frequency_share": share,
        "spectrum": [float(x) for x in spectrum_K], "wall_s": curves["wall_s"],
    }


def _eval_series(curves, key):
    steps = sorted(int(k) for k in curves["eval"])
    return steps, [curves["eval"][str(s)][key] for s in steps]


def _train_series(curves, index):
    steps = sorted(int(k) for k in curves["train"])
    return steps, [curves["train"][str(s)][index] for s in steps]


def plot_runs(runs: list, path: str, title: str) -> None:
    """runs: [(label, curves, summary)]. Four panels: accuracy and loss (log-x, train dashed),
    weight norm, and each run's final embedding spectrum."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (acc, loss), (norm, spec) = axes
    for i, (label, curves, summary) in enumerate(runs):
        color = f"C{i}"
        acc.plot(*_train_series(curves, 1), color=color, ls="--", lw=0.8)
        acc.plot(*_eval_series(curves, "test_accuracy"), color=color, label=label)
        loss.plot(*_train_series(curves, 0), color=color, ls="--", lw=0.8)
        loss.plot(*_eval_series(curves, "test_loss"), color=color, label=label)
        norm.plot(*_eval_series(curves, "weight_norm"), color=color, label=label)
        spectrum = summary["spectrum"]
        spec.plot(range(1, len(spectrum)), spectrum[1:], color=color, marker=".", label=label)
    acc.set(xscale="log", xlabel="step", ylabel="accuracy", title="accuracy (train dashed)")
    loss.set(xscale="log", yscale="log", xlabel="step", ylabel="cross-entropy",
             title="loss (train dashed)")
    norm.set(xscale="log", xlabel="step", ylabel="||params||_2", title="weight norm")
    spec.set(xlabel="frequency k", ylabel="norm", title="embedding Fourier spectrum (end)")
    for ax in (acc, loss, norm, spec):
        ax.grid(alpha=0.3)
    acc.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# The published runs, by (operation, p, train fraction): what their papers report for softmax
# attention, beside ours in the table. Other settings (p = 53, the delta-rule mixers) have none.
PUBLISHED = {
    ("+", 113, 0.3): "train ~100% by ~1.4k steps, test by ~10k (Nanda et al. 2023)",
    ("/", 97, 0.5): "train ~100% before 10^3 steps, test ~100% near 10^6, little before 10^5 "
                    "(Power et al. 2022, Fig. 1)",
}


def published(operation: str, summary: dict) -> str:
    """The published result for a run's setting, or "-" where no paper trained it."""
    if summary["mixer"] != "attention":
        return "-"
    return PUBLISHED.get((operation, summary["p"], summary["train_fraction"]), "-")


def _cell(value):
    if value is None:
        return "not reached"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def report(config, results: list, workdir: str, png_path: str) -> tuple:
    """The figure of every finished run's curves, and a table of their summaries."""
    curves = [study.read_json(os.path.join(workdir, "runs", r["name"], "curves.json"))
              for r in results]
    title = f"Grokking, {config.task.operation} mod {config.task.p} ({config.preset})"
    plot_runs([(r["name"], c, r) for r, c in zip(results, curves, strict=True)], png_path, title)
    lines = ["| run | mixer | p | frac | n_train | wd | train > 99% at | test > 99% at | delay "
             "| final test acc | final weight norm | key frequencies (share) | steps | wall "
             "| published |",
             "|" + "---|" * 15]
    for s in results:
        lines.append(
            f"| {s['name']} | {s['mixer']} | {s['p']} | {s['train_fraction']:g} | {s['n_train']} "
            f"| {s['weight_decay']:g} | {_cell(s['train_step_99'])} | {_cell(s['test_step_99'])} "
            f"| {_cell(s['delay'])} | {s['final_test_accuracy']:.4f} | "
            f"{s['final_weight_norm']:.1f} | {', '.join(map(str, s['key_frequencies']))} "
            f"({s['key_frequency_share']:.2f}) | {s['steps']} | {s['wall_s'] / 60:.1f} min "
            f"| {published(config.task.operation, s)} |")
    return title, "\n".join(lines) + "\n"


def run_study(config, workdir: str, **kwargs) -> list:
    """Every selected run of config, resuming; the report after each. kwargs: study.run_study's
    command, out, report_only."""
    return study.run_study(config, workdir, study="grokking", train_fn=train_and_evaluate,
                           report=report, **kwargs)


if __name__ == "__main__":
    study.main("experiments.grokking_modular", run_study, "configs/grokking.py:nanda",
               "runs/grokking")
