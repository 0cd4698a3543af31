r"""In-context modular arithmetic (He et al. 2024): train every run of the sweep on sequences of
its pre-training tasks (resuming), score the z of every example k = 1..n_ctx on new inputs of the
pre-training tasks (in distribution) and of the held-out tasks (out of distribution), then the
table and the plot.

    python -m experiments.icl_modular --config=configs/icl_modular.py:cpu \
        --workdir=runs/icl-modular-cpu --out=benchmarks/results/cpu-icl-modular
    python -m experiments.icl_modular --config=configs/icl_modular.py:paper \
        --workdir=runs/icl-modular-paper --config.only='attention-*'

(`python experiments/icl_modular.py ...` runs the same.) Each run trains in
<workdir>/runs/<run name>/ (config.json, result.json, checkpoints, TensorBoard) with
deltajax.train.fit, evaluating on the held-out tasks as it goes (the out-of-distribution curve);
evaluation sequences use only the (x, y) pairs that no pre-training sequence holds.
"""

import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from deltajax import study
from deltajax.data import make_dataset
from deltajax.data.icl_modular import ICLModularSource, pair_split, task_split, z_positions
from deltajax.models import LanguageModel, ModelConfig
from deltajax.train import fit

matplotlib.use("Agg")  # files only; no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

# What the paper says of each mixer, beside our numbers (its abstract and Fig. 1 in words: we
# quote no number we could not read in its text). DeltaNet is not in the paper.
PUBLISHED = {
    "attention": "few tasks: i.d. only (o.o.d. at chance); past a threshold n_i.d.: o.o.d. "
                 "generalisation (Fig. 1, p=29, d=4; needs depth >= 2)",
    "deltanet": "not studied",
}


def build_model(config) -> LanguageModel:
    return LanguageModel(ModelConfig(vocab_size=config.task.p, **config.model.to_dict()))


def splits(config) -> dict:
    """{"pretrain", "ood"}: tasks [N, 2]; {"train_pairs", "test_pairs"}: inputs [P, 2]."""
    t = config.task
    pretrain, ood = task_split(t.p, t.num_tasks, t.num_ood_tasks, config.seed,
                               parallelogram=t.parallelogram)
    train_pairs, test_pairs = pair_split(t.p, t.train_fraction, config.seed)
    return {"pretrain": pretrain, "ood": ood, "train_pairs": train_pairs,
            "test_pairs": test_pairs}


def make_source(config, split: str, parts=None) -> ICLModularSource:
    """train: pre-training tasks on the train inputs; id: the same tasks on the held-out inputs;
    ood: the held-out tasks on the held-out inputs (each its own seed)."""
    t = config.task
    parts = parts or splits(config)
    tasks, pairs, num, seed = {
        "train": ("pretrain", "train_pairs", t.num_train_examples, config.seed),
        "id": ("pretrain", "test_pairs", t.num_eval_examples, config.seed + 10_000),
        "ood": ("ood", "test_pairs", t.num_eval_examples, config.seed + 20_000),
    }[split]
    return ICLModularSource(t.p, parts[tasks], parts[pairs], t.n_ctx, num, seed)


def check(config) -> None:
    """Raises a ValueError naming the run and the field before any run trains."""
    study.check_config(config, "icl_modular")
    for run in study.select_runs(config):
        this = study.run_config(config, run)
        try:
            build_model(this)  # its errors name ModelConfig.<field>, i.e. config.model.<field>
        except ValueError as error:
            raise ValueError(f"run {this.name}: config.model: {error}") from error
        try:  # the data's errors start with the argument, a field of config.task
            parts = splits(this)
            for split in ("train", "id", "ood"):
                make_source(this, split, parts)
        except ValueError as error:
            raise ValueError(f"run {this.name}: config.task.{error}") from error
        if this.task.num_eval_examples < this.train.global_batch_size:
            raise ValueError(f"run {this.name}: config.task.num_eval_examples="
                             f"{this.task.num_eval_examples} must be at least "
                             f"config.train.global_batch_size={this.train.global_batch_size} "
                             "(one eval batch)")


def predictor(model):
    """(params, inputs_BT) -> the argmax token at every position, jitted (one compile a run)."""
    return jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x), axis=-1))


def shot_accuracy(config, predict, params, source: ICLModularSource) -> np.ndarray:
    """Accuracy of z_k, k = 1..n_ctx, over the source's sequences: float [n_ctx]."""
    dataset = make_dataset(source, seed=config.seed,
                           global_batch_size=config.train.global_batch_size, shuffle=False,
                           num_epochs=1)
    at = z_positions(source.n_ctx)
    correct, count = np.zeros(source.n_ctx), 0
    for index in range(len(dataset)):
        batch = dataset[index]
        right = np.asarray(predict(params, batch["inputs"]))[:, at] == batch["targets"][:, at]
        correct += right.sum(axis=0)
        count += len(right)
    return correct / max(count, 1)


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains (or resumes) one run in workdir; returns its k-shot accuracies."""
    start = time.perf_counter()
    model = build_model(config)
    parts = splits(config)
    fitted = fit(study.trainer_config(config), model, make_source(config, "train", parts), workdir,
                 eval_source=make_source(config, "ood", parts))
    if fitted.preempted:
        raise study.Preempted(f"{workdir}: preempted after step {int(fitted.state.step)} "
                              "(saved); run the same command again to resume")
    predict = predictor(model)
    by_shot = {split: shot_accuracy(config, predict, fitted.state.params,
                                    make_source(config, split, parts)).tolist()
               for split in ("id", "ood")}
    return {"id_by_shot": by_shot["id"], "ood_by_shot": by_shot["ood"],
            "id_last": by_shot["id"][-1], "ood_last": by_shot["ood"][-1],
            # The held-out tasks' accuracy over every shot, as training went.
            "ood_curve": [[e["step"], e["eval/accuracy"]] for e in fitted.eval_history],
            "train_accuracy": (fitted.history[-1].get("accuracy") if fitted.history else None),
            "steps": int(fitted.state.step), "seconds_this_call": time.perf_counter() - start}


def _cells(config, results: list) -> list:
    """[(mixer, num_tasks, result or None)] in sweep order; a run's name is
    run_id(mixer, tasks=n)."""
    finished = {r["name"]: r for r in results}
    cells = []
    for run in study.select_runs(config):
        this = study.run_config(config, run)
        cells.append((this.model.mixer, this.task.num_tasks, finished.get(run["name"])))
    return cells


def markdown_table(config, results: list) -> str:
    chance = 100 / config.task.p
    lines = ["| mixer | n_tasks | train acc (%) | i.d. acc (%) | o.o.d. acc (%) | chance (%) | "
             "steps | published (He et al.) |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for mixer, n, result in _cells(config, results):
        if result is None:
            cells = ["-", "-", "-", f"{chance:.1f}", "-"]
        else:
            train = result.get("train_accuracy")
            cells = ["-" if train is None else f"{100 * train:.1f}",
                     f"{100 * result['id_last']:.1f}", f"{100 * result['ood_last']:.1f}",
                     f"{chance:.1f}", str(result["steps"])]
        lines.append(f"| {mixer} | {n} | " + " | ".join(cells) +
                     f" | {PUBLISHED.get(mixer, '-')} |")
    return "\n".join(lines) + "\n"


def shot_table(config, results: list) -> str:
    """Accuracy (%) by shot k for every finished run, i.d. / o.o.d."""
    n = config.task.n_ctx
    shots = sorted({1, 2, 4, 8, 16, 32, n} & set(range(1, n + 1)))
    lines = ["| mixer | n_tasks | " + " | ".join(f"k={k}" for k in shots) + " |",
             "|---|---:|" + "---:|" * len(shots)]
    for mixer, num_tasks, result in _cells(config, results):
        if result is not None:
            pairs = zip(result["id_by_shot"], result["ood_by_shot"], strict=True)
            cells = [f"{100 * i:.0f} / {100 * o:.0f}" for i, o in pairs]
            lines.append(f"| {mixer} | {num_tasks} | " +
                         " | ".join(cells[k - 1] for k in shots) + " |")
    return "\n".join(lines) + "\n"


def plot(config, results: list, path: str) -> None:
    """Last-shot accuracy against num_tasks (a colour per mixer; i.d. dashed, o.o.d. solid), and
    accuracy against shot k for every run (left: i.d., right: o.o.d.; darker: more tasks)."""
    cells = [c for c in _cells(config, results) if c[2] is not None]
    mixers = list(dict.fromkeys(m for m, _, _ in _cells(config, results)))
    colours = {m: f"C{i}" for i, m in enumerate(mixers)}
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for mixer in mixers:
        mine = sorted((n, r) for m, n, r in cells if m == mixer)
        if mine:
            counts = [n for n, _ in mine]
            axes[0].plot(counts, [100 * r["ood_last"] for _, r in mine], "o-",
                         color=colours[mixer], label=f"{mixer} o.o.d.")
            axes[0].plot(counts, [100 * r["id_last"] for _, r in mine], "s--",
                         color=colours[mixer], alpha=0.6, label=f"{mixer} i.d.")
    counts = sorted({n for _, n, _ in cells}) or [1]
    for mixer, n, result in cells:
        shade = 0.25 + 0.75 * (counts.index(n) + 1) / len(counts)
        shots = np.arange(1, config.task.n_ctx + 1)
        for ax, key in ((axes[1], "id_by_shot"), (axes[2], "ood_by_shot")):
            ax.plot(shots, 100 * np.asarray(result[key]), color=colours[mixer], alpha=shade,
                    label=f"{mixer} n={n}")
    chance = 100 / config.task.p
    for ax, title, xlabel in ((axes[0], "last shot vs pre-training tasks", "n_tasks"),
                              (axes[1], "in distribution, by shot", "shot k"),
                              (axes[2], "out of distribution, by shot", "shot k")):
        ax.axhline(chance, color="gray", linestyle=":", linewidth=1)
        ax.set(title=title, xlabel=xlabel, ylim=(0, 101))
        ax.grid(alpha=0.3)
    axes[0].set_xscale("log", base=2)
    axes[0].set_ylabel("accuracy (%)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(config, results: list, workdir: str, png_path: str) -> tuple:
    del workdir  # the results hold all the table needs
    plot(config, results, png_path)
    m, t, train = config.model, config.task, config.train
    about = (f"z = (a x + b y) mod {t.p}; sequences of {t.n_ctx} examples `x y z` of one task; "
             f"{t.num_ood_tasks} held-out tasks; pre-training tasks "
             f"{'by parallelograms' if t.parallelogram else 'uniform'}; "
             f"{100 * t.train_fraction:g}% of the (x, y) inputs for pre-training, the rest for "
             f"evaluation. One recipe for every run: {m.num_layers} layers, d_model {m.d_model}, "
             f"{m.num_heads} heads, MLP {m.mlp}; AdamW lr {train.optimizer.learning_rate:g}, "
             f"weight decay {train.optimizer.weight_decay:g}, batch {train.global_batch_size}, "
             f"{train.num_steps} steps. Accuracy of the last example's z over "
             f"{t.num_eval_examples} sequences: i.d. = pre-training tasks on held-out inputs, "
             "o.o.d. = held-out tasks on held-out inputs; train = the last training batch, "
             "every shot.")
    title = f"In-context modular arithmetic (He et al. 2024), {config.preset} preset"
    body = (f"{about}\n\n{markdown_table(config, results)}\n"
            f"By shot k (i.d. / o.o.d., %):\n\n{shot_table(config, results)}")
    return title, body


def run_study(config, workdir: str, **kwargs) -> list:
    """Every selected run of config, resuming; the report after each. kwargs: study.run_study's
    command, out, report_only."""
    check(config)
    return study.run_study(config, workdir, study="icl_modular", train_fn=train_and_evaluate,
                           report=report, **kwargs)


if __name__ == "__main__":
    study.main("experiments.icl_modular", run_study, "configs/icl_modular.py:cpu",
               "runs/icl-modular")
