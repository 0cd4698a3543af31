r"""The MQAR recall study: train every run of the sweep (resuming), then its table and plot.

    python -m experiments.mqar --config=configs/mqar.py:cpu --workdir=runs/mqar-cpu
    python -m experiments.mqar --config=configs/mqar.py:paper --workdir=runs/mqar-paper
    python -m experiments.mqar --config=configs/mqar.py:cpu \
        --config.model.delta_rule.backend=recurrent --config.only='deltanet-*'

(`python experiments/mqar.py ...` runs the same.) Writes <workdir>/results.md, results.png,
config.json and runs/<run name>/ (config.json, result.json, checkpoints, tensorboard); --out also
writes the table, plot and config to <out>.md, .png, .json. Running the same command again skips
finished runs and resumes the unfinished one; --report_only writes the report of those finished.
"""

import collections
import functools
import os
import time
from typing import Optional

import jax
import matplotlib
import numpy as np

from deltajax import study
from deltajax.data import MQARSource
from deltajax.models import LanguageModel, ModelConfig
from deltajax.train import eval_step, fit
from deltajax.train.evaluate import evaluate

matplotlib.use("Agg")  # files only; no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

# The grid of Zoology's and the DeltaNet paper's Fig. 2: (seq_len, kv pairs).
PUBLISHED_SETTINGS = ((64, 4), (128, 8), (256, 16), (512, 64))
# Published MQAR accuracy (%), read from those figures, for every d_model (64-512) of a
# published setting: mixer -> (value, source). Attention is at ~100% in every setting and width;
# DeltaNet at ~100% (from d_model 128 in the hardest setting). Neither plots linear attention.
PUBLISHED = {"attention": (100.0, "Zoology Fig. 2, DeltaNet Fig. 2"),
             "deltanet": (100.0, "DeltaNet Fig. 2")}


def published(mixer: str, seq_len: int, num_kv_pairs: int) -> Optional[tuple]:
    """(value, source) for a study mixer (attention_conv counts as attention) or None; off the
    published grid, the source says the value is that of every published setting."""
    value = PUBLISHED.get(mixer.removesuffix("_conv"))
    if value is None or (seq_len, num_kv_pairs) in PUBLISHED_SETTINGS:
        return value
    return value[0], f"at every published setting; {value[1]}"


def build_model(config) -> LanguageModel:
    return LanguageModel(ModelConfig(vocab_size=config.task.vocab_size,
                                     **config.model.to_dict()))


def make_source(config, *, split: str) -> MQARSource:
    """Train and eval data differ by seed; the eval set is the same for every run of a setting."""
    t = config.task
    num, seed = ((t.num_train_examples, config.seed) if split == "train"
                 else (t.num_eval_examples, config.seed + 10_000))
    return MQARSource(num_examples=num, seq_len=t.seq_len, num_kv_pairs=t.num_kv_pairs,
                      vocab_size=t.vocab_size, power_a=t.power_a, seed=seed)


def trainer_config(config):
    train = study.trainer_config(config)
    train.eval.num_batches = config.task.num_eval_examples // config.train.global_batch_size
    return train


def check(config) -> None:
    """Raises a ValueError naming the field before any run trains: every selected run's model,
    data and learning rate, and an eval set of at least one batch."""
    study.check_config(config, "mqar")
    for run in study.select_runs(config):
        this = study.run_config(config, run)
        try:
            build_model(this)
            make_source(this, split="eval")
        except ValueError as error:  # a sweep has hundreds of runs: say which one
            raise ValueError(f"run {this.name}: {error}") from error
        if not this.train.optimizer.learning_rate > 0:
            raise ValueError(f"run {this.name}: config.train.optimizer.learning_rate="
                             f"{this.train.optimizer.learning_rate!r} must be positive")
    if config.task.num_eval_examples < config.train.global_batch_size:
        raise ValueError(f"config.task.num_eval_examples={config.task.num_eval_examples} must "
                         f"be at least config.train.global_batch_size="
                         f"{config.train.global_batch_size} (one eval batch)")


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains (or resumes) one run in workdir; returns its eval accuracy and loss."""
    train, eval_source = trainer_config(config), make_source(config, split="eval")
    start = time.perf_counter()
    fitted = fit(train, build_model(config), make_source(config, split="train"), workdir,
                 eval_source=eval_source)
    if fitted.preempted:
        raise study.Preempted(f"{workdir}: preempted after step {int(fitted.state.step)} "
                              "(saved); run the same command again to resume")
    metrics = fitted.eval_metrics
    if not metrics:  # resumed after its last step: evaluate the restored model
        eval_fn = jax.jit(functools.partial(eval_step, model=build_model(config)))
        metrics = evaluate(train, eval_fn, fitted.state.params, eval_source, mesh=None)
    return {"accuracy": float(metrics["eval/accuracy"]), "loss": float(metrics["eval/loss"]),
            "steps": int(fitted.state.step), "stopped_early": fitted.stopped_early,
            "seconds_this_call": time.perf_counter() - start}


def cell(config, run) -> tuple:
    """(seq_len, num_kv_pairs, mixer, d_model, learning_rate, seed) of a run; the mixer is the
    first word of its name (deltanet_noconv is a deltanet model)."""
    this = study.run_config(config, run)
    return (this.task.seq_len, this.task.num_kv_pairs, run["name"].split("-")[0],
            this.model.d_model, this.train.optimizer.learning_rate, this.seed)


def _axes(config) -> tuple:
    """{run name: cell}, and the settings, mixers and d_models of the selected runs in order."""
    by_name = {run["name"]: cell(config, run) for run in study.select_runs(config)}
    cells = list(by_name.values())
    return (by_name, list(dict.fromkeys((c[0], c[1]) for c in cells)),
            list(dict.fromkeys(c[2] for c in cells)), sorted({c[3] for c in cells}))


def summarise(config, results: list) -> dict:
    """(seq_len, kv, mixer, d_model) -> the learning rate with the best mean accuracy over the
    seeds that finished, and at it: accuracies (%) per seed, how many of the sweep's learning
    rates and seeds have finished ("lrs", "seeds" as (finished, planned))."""
    by_name = _axes(config)[0]
    planned_lrs = collections.defaultdict(set)
    planned_seeds = collections.defaultdict(set)
    for seq_len, kv, mixer, d, lr, seed in by_name.values():
        planned_lrs[seq_len, kv, mixer, d].add(lr)
        planned_seeds[seq_len, kv, mixer, d].add(seed)
    accuracies = collections.defaultdict(lambda: collections.defaultdict(list))
    steps = collections.defaultdict(lambda: collections.defaultdict(list))
    for result in results:
        seq_len, kv, mixer, d, lr, _ = by_name[result["name"]]
        accuracies[seq_len, kv, mixer, d][lr].append(100 * result["accuracy"])
        steps[seq_len, kv, mixer, d][lr].append(result.get("steps"))
    summary = {}
    for key, per_lr in accuracies.items():
        lr, accs = max(per_lr.items(), key=lambda item: np.mean(item[1]))
        summary[key] = dict(lr=lr, accuracies=accs, steps=steps[key][lr],
                            lrs=(len(per_lr), len(planned_lrs[key])),
                            seeds=(len(accs), len(planned_seeds[key])))
    return summary


def _cell_text(entry: dict, many_lrs: bool) -> str:
    accs = entry["accuracies"]
    text = f"{np.mean(accs):.1f}"
    if len(accs) > 1:
        text += f" ({min(accs):.1f}-{max(accs):.1f})"
    notes = [f"lr {entry['lr']:.1e}"] if many_lrs else []
    run_steps = [n for n in entry["steps"] if n is not None]
    if run_steps:  # how long each seed trained: early stop at the target, or the whole budget
        low, high = min(run_steps), max(run_steps)
        notes.append(f"{low} steps" if low == high else f"{low}-{high} steps")
    for what in ("lrs", "seeds"):
        done, planned = entry[what]
        if done < planned:
            notes.append(f"{done} of {planned} {what}")
    return text + (f" [{'; '.join(notes)}]" if notes else "")


def markdown_table(config, results: list) -> str:
    """One table per (seq_len, kv pairs): rows mixers, columns d_model, then the published
    value. A cell: the mean accuracy in % over seeds (their range in brackets) at the learning
    rate with the best mean, the steps the seeds trained, and what has not finished yet; "-"
    where no run has finished."""
    by_name, settings, mixers, d_models = _axes(config)
    many_lrs = len({c[4] for c in by_name.values()}) > 1
    summary = summarise(config, results)
    lines = []
    for seq_len, kv in settings:
        lines += [f"**seq_len {seq_len}, {kv} key-value pairs** (chance, one of the {kv} values "
                  f"in context: {100 / kv:.1f}%)", "",
                  "| mixer | " + " | ".join(f"d={d}" for d in d_models) + " | published |",
                  "|---|" + "---:|" * len(d_models) + "---|"]
        for mixer in mixers:
            cells = [_cell_text(summary[key], many_lrs) if key in summary else "-"
                     for key in ((seq_len, kv, mixer, d) for d in d_models)]
            value = published(mixer, seq_len, kv)
            text = f"~{value[0]:.0f} ({value[1]})" if value else "-"
            lines.append(f"| {mixer} | " + " | ".join(cells) + f" | {text} |")
        lines.append("")
    return "\n".join(lines)


def plot(config, results: list, path: str, workdir: Optional[str] = None) -> None:
    """Mean accuracy against d_model (bars: the seeds' range), one line per mixer, a panel per
    (seq_len, kv pairs), with chance and the published values marked."""
    _, settings, mixers, d_models = _axes(config)
    summary = summarise(config, results)
    fig, axes = plt.subplots(2, len(settings), figsize=(4.6 * len(settings), 7.2),
                             squeeze=False, sharey=True)
    for ax, (seq_len, kv) in zip(axes[0], settings, strict=True):
        for mixer in mixers:
            points = [(d, summary[seq_len, kv, mixer, d]["accuracies"]) for d in d_models
                      if (seq_len, kv, mixer, d) in summary]
            if not points:
                continue
            ds = [d for d, _ in points]
            means = np.array([np.mean(a) for _, a in points])
            spread = np.array([[m - min(a), max(a) - m]
                               for m, (_, a) in zip(means, points, strict=True)]).T
            ax.errorbar(ds, means, yerr=spread, marker="o", capsize=3, label=mixer,
                        color=f"C{mixers.index(mixer)}",  # one colour per mixer in every panel
                        linestyle="--" if "noconv" in mixer else "-")
        ax.axhline(100 / kv, color="gray", linewidth=0.8, linestyle=":", label="chance (1/kv)")
        marked = [m for m in mixers if published(m, seq_len, kv)
                  and (seq_len, kv) in PUBLISHED_SETTINGS]
        if marked:
            ax.plot(d_models, [100.0] * len(d_models), linestyle="none", marker="*",
                    markersize=10, color="black",
                    label=f"published ~100%: {', '.join(marked)}")
        ax.set_xscale("log", base=2)
        ax.set_xlim(min(d_models) / 1.4, max(d_models) * 1.4)
        ax.set_xticks(d_models, [str(d) for d in d_models])
        ax.set(title=f"seq_len {seq_len}, {kv} kv pairs", xlabel="d_model", ylim=(0, 103))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MQAR accuracy (%)")
    _plot_curves(config, results, axes[1], settings, mixers, workdir)
    handles = {line.get_label(): line for ax in axes[0] for line in ax.get_lines()
               if not line.get_label().startswith("_")}
    for ax in axes[0]:
        for container in ax.containers:
            handles[container.get_label()] = container
    if handles:  # a sweep's first report may have no finished run to draw
        fig.legend(handles.values(), handles.keys(), fontsize=7, loc="center left",
                   bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _plot_curves(config, results, axes, settings, mixers, workdir) -> None:
    """Eval accuracy against step for every finished run (a line per seed, a colour per mixer),
    from each run's fit_summary.json; a panel per setting."""
    by_name = _axes(config)[0]
    for ax, (seq_len, kv) in zip(axes, settings, strict=True):
        for result in results:
            s, k, mixer, *_ = by_name[result["name"]]
            summary = study.read_json(os.path.join(workdir or "", "runs", result["name"],
                                                   "fit_summary.json"))
            if (s, k) != (seq_len, kv) or not summary or not workdir:
                continue
            history = summary.get("eval_history", [])
            ax.plot([h["step"] for h in history], [100 * h["eval/accuracy"] for h in history],
                    color=f"C{mixers.index(mixer)}", alpha=0.8, linewidth=1.2,
                    linestyle="--" if "noconv" in mixer else "-")
        ax.axhline(100 / kv, color="gray", linewidth=0.8, linestyle=":")
        ax.set(xlabel="training step", title=f"eval accuracy during training ({seq_len}, {kv})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("MQAR accuracy (%)")


def report(config, results: list, workdir: str, png_path: str) -> tuple:
    plot(config, results, png_path, workdir)
    t, train = config.task, config.train
    steps = [r["steps"] for r in results]
    cells = [cell(config, run) for run in study.select_runs(config)]
    lrs, seeds = dict.fromkeys(c[4] for c in cells), dict.fromkeys(c[5] for c in cells)
    about = (f"Vocab {t.vocab_size}, {t.num_train_examples} training and {t.num_eval_examples} "
             f"eval sequences per setting; at most {train.num_steps} steps of batch "
             f"{train.global_batch_size}, lr warmup {train.schedule.warmup_steps} steps then "
             f"{train.schedule.name} decay, stopping at "
             f"{100 * train.eval.early_stop_value:.0f}% eval accuracy (steps run: "
             f"{min(steps, default=0)}-{max(steps, default=0)}); learning rates "
             f"{', '.join(f'{lr:.2e}' for lr in lrs)}; seeds {', '.join(map(str, seeds))}. "
             "Cells: the mean eval accuracy (%) over seeds, their range in brackets"
             + (", at the learning rate with the best mean" if len(lrs) > 1 else "")
             + ". Published: read from the papers' figures (they sweep 4 learning rates and "
             "train ~25k steps of batch 256 on a GPU).")
    title = f"MQAR accuracy ({config.preset} preset)"
    return title, f"{about}\n\n{markdown_table(config, results)}"


def run_study(config, workdir: str, **kwargs) -> list:
    """Every selected run of config, resuming; the report after each. kwargs: study.run_study's
    command, out, report_only."""
    check(config)
    return study.run_study(config, workdir, study="mqar", train_fn=train_and_evaluate,
                           report=report, **kwargs)


if __name__ == "__main__":
    study.main("experiments.mqar", run_study, "configs/mqar.py:cpu", "runs/mqar")
