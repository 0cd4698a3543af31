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
import time

import jax
import matplotlib

from deltajax import study
from deltajax.data import MQARSource
from deltajax.models import LanguageModel, ModelConfig
from deltajax.train import eval_step, fit
from deltajax.train.config import merge_with_defaults
from deltajax.train.evaluate import evaluate

matplotlib.use("Agg")  # files only; no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


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
    train = merge_with_defaults(config.train)
    train.seed = config.seed
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
    """(seq_len, num_kv_pairs, mixer, d_model, learning_rate) of a run; the mixer is the first
    word of its name (deltanet_noconv is a deltanet model)."""
    this = study.run_config(config, run)
    return (this.task.seq_len, this.task.num_kv_pairs, run["name"].split("-")[0],
            this.model.d_model, this.train.optimizer.learning_rate)


def _axes(config) -> tuple:
    """{run name: cell}, and the settings, mixers and d_models of the selected runs in order."""
    by_name = {run["name"]: cell(config, run) for run in study.select_runs(config)}
    cells = list(by_name.values())
    return (by_name, list(dict.fromkeys((c[0], c[1]) for c in cells)),
            list(dict.fromkeys(c[2] for c in cells)), sorted({c[3] for c in cells}))


def markdown_table(config, results: list) -> str:
    """One table per (seq_len, kv pairs): rows mixers, columns d_model, cells the best accuracy
    in % (the learning rate that gave it, and how many of the learning rates have run when not
    all have); "-" where no run has finished."""
    by_name, settings, mixers, d_models = _axes(config)
    num_lrs = len({c[4] for c in by_name.values()})
    best, tried = {}, collections.Counter()
    for result in results:
        *key, lr = by_name[result["name"]]
        key = tuple(key)
        tried[key] += 1
        if key not in best or result["accuracy"] > best[key][0]:
            best[key] = (result["accuracy"], lr)
    lines = []
    for seq_len, kv in settings:
        lines += [f"**seq_len {seq_len}, {kv} key-value pairs**", "",
                  "| mixer | " + " | ".join(f"d={d}" for d in d_models) + " |",
                  "|---|" + "---:|" * len(d_models)]
        for mixer in mixers:
            cells = []
            for d in d_models:
                key = (seq_len, kv, mixer, d)
                if key not in best:
                    cells.append("-")
                    continue
                partial = f"; {tried[key]} of {num_lrs} lrs" if tried[key] < num_lrs else ""
                cells.append(f"{100 * best[key][0]:.1f} ({best[key][1]:.1e}{partial})")
            lines.append(f"| {mixer} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(config, results: list, path: str) -> None:
    """Best accuracy against d_model, one line per mixer, a panel per (seq_len, kv pairs)."""
    by_name, settings, mixers, d_models = _axes(config)
    best = {}
    for result in results:
        *key, _ = by_name[result["name"]]
        best[tuple(key)] = max(best.get(tuple(key), 0.0), 100 * result["accuracy"])
    fig, axes = plt.subplots(1, len(settings), figsize=(4 * len(settings), 3.4), squeeze=False,
                             sharey=True)
    for ax, (seq_len, kv) in zip(axes[0], settings, strict=True):
        for mixer in mixers:
            points = sorted((d, acc) for (s, k, m, d), acc in best.items()
                            if (s, k, m) == (seq_len, kv, mixer))
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=mixer)
        ax.set_xscale("log", base=2)
        ax.set_xlim(min(d_models) / 1.4, max(d_models) * 1.4)
        ax.set_xticks(d_models, [str(d) for d in d_models])
        ax.set(title=f"seq_len {seq_len}, {kv} kv pairs", xlabel="d_model", ylim=(0, 101))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MQAR accuracy (%)")
    handles = {line.get_label(): line for ax in axes[0] for line in ax.get_lines()}
    if handles:  # a sweep's first report may have no finished run to draw
        axes[0][-1].legend(handles.values(), handles.keys(), fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(config, results: list, workdir: str, png_path: str) -> tuple:
    del workdir  # the results hold all the table needs
    plot(config, results, png_path)
    t, train = config.task, config.train
    steps = [r["steps"] for r in results]
    lrs = dict.fromkeys(cell(config, run)[4] for run in study.select_runs(config))
    about = (f"Vocab {t.vocab_size}, {t.num_train_examples} training and {t.num_eval_examples} "
             f"eval sequences per setting; at most {train.num_steps} steps of batch "
             f"{train.global_batch_size}, stopping at {100 * train.eval.early_stop_value:.0f}% "
             f"eval accuracy (steps run: {min(steps, default=0)}-{max(steps, default=0)}); "
             f"learning rates {', '.join(f'{lr:.2e}' for lr in lrs)}. Cells: the best accuracy "
             "(%) over learning rates, the best learning rate in brackets.")
    title = f"MQAR accuracy, best over learning rates ({config.preset} preset)"
    return title, f"{about}\n\n{markdown_table(config, results)}"


def run_study(config, workdir: str, **kwargs) -> list:
    """Every selected run of config, resuming; the report after each. kwargs: study.run_study's
    command, out, report_only."""
    check(config)
    return study.run_study(config, workdir, study="mqar", train_fn=train_and_evaluate,
                           report=report, **kwargs)


if __name__ == "__main__":
    study.main("experiments.mqar", run_study, "configs/mqar.py:cpu", "runs/mqar")
