r"""Grokking as the transition from lazy to rich training (Kumar et al., ICLR 2024).

Inputs x ~ N(0, I / D), target y = (beta . x)^2 / 2 with beta ~ N(0, I); a two-layer net with
N hidden units, first-layer weights W ~ N(0, I) and a fixed mean readout,

    f(x) = alpha * (mean_i phi(w_i . x) - mean_i phi(w0_i . x)),   phi(z) = z + (eps / 2) z^2,

centred so that f = 0 at initialisation whatever alpha (the output-scale laziness of Chizat and
Bach). Full-batch gradient descent on (1/2) mean squared error with lr = lr0 * N / alpha^2 moves
f at an alpha-independent speed while the weights move as 1 / alpha: large alpha trains lazily
(a kernel regression with the initial NTK), small alpha learns features from the start.

    python -m experiments.lazy_rich --config=configs/lazy_rich.py:kumar \
        --workdir=runs/lazy_rich --out=benchmarks/results/cpu-lazy-rich

(`python experiments/lazy_rich.py ...` runs the same.) Each (alpha, eps) run lives in
<workdir>/runs/a<alpha>-e<eps>/ (orbax checkpoints, TensorBoard, curves.json) and resumes there.
"""

import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np

from deltajax import study
from deltajax.analysis import centred_alignment, first_step_above, kernel_distance
from deltajax.train import checkpoint as ckpt
from deltajax.train import logging as tb

matplotlib.use("Agg")  # files only; no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


class Task(NamedTuple):
    x_train_PD: jax.Array
    y_train_P: jax.Array
    x_test_MD: jax.Array
    y_test_M: jax.Array


def make_task(dim: int, num_train: int, num_test: int, seed: int) -> Task:
    for name, value in (("dim", dim), ("num_train", num_train), ("num_test", num_test)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    k_beta, k_train, k_test = jax.random.split(jax.random.PRNGKey(seed), 3)
    beta_D = jax.random.normal(k_beta, (dim,))
    draw = lambda key, n: jax.random.normal(key, (n, dim)) / math.sqrt(dim)
    x_train, x_test = draw(k_train, num_train), draw(k_test, num_test)
    return Task(x_train, 0.5 * (x_train @ beta_D) ** 2, x_test, 0.5 * (x_test @ beta_D) ** 2)


def phi(z, eps):
    return z + 0.5 * eps * z * z


def network(w_ND, w0_ND, x_PD, *, alpha, eps):
    """f(x) [P] of the centred two-layer net."""
    return alpha * (jnp.mean(phi(x_PD @ w_ND.T, eps), axis=1)
                    - jnp.mean(phi(x_PD @ w0_ND.T, eps), axis=1))


def loss(w_ND, w0_ND, x_PD, y_P, *, alpha, eps):
    return 0.5 * jnp.mean((network(w_ND, w0_ND, x_PD, alpha=alpha, eps=eps) - y_P) ** 2)


def ntk(w_ND, x_PD, *, alpha, eps):
    """The empirical NTK [P, P]: df/dw_i = (alpha / N) phi'(w_i . x) x, so
    K(x, x') = (alpha / N)^2 sum_i phi'(w_i . x) phi'(w_i . x') (x . x')."""
    slope_PN = 1.0 + eps * (x_PD @ w_ND.T)
    scale = (alpha / w_ND.shape[0]) ** 2
    return scale * (slope_PN @ slope_PN.T) * (x_PD @ x_PD.T)


def learning_rate(config) -> float:
    return config.train.lr0 * config.model.width / config.model.alpha ** 2


@jax.jit
def _gd_steps(w_ND, w0_ND, x_PD, y_P, num_steps, alpha, eps, lr):
    """num_steps full-batch GD updates. Every argument is traced, so one compilation serves
    every alpha, eps and step count of a sweep."""
    grad = jax.grad(loss)
    body = lambda _, w: w - lr * grad(w, w0_ND, x_PD, y_P, alpha=alpha, eps=eps)
    return jax.lax.fori_loop(0, num_steps, body, w_ND)


@jax.jit
def _measure(w_ND, w0_ND, task: Task, kernel0_PP, alpha, eps) -> dict:
    kernel_PP = ntk(w_ND, task.x_train_PD, alpha=alpha, eps=eps)
    return {
        "train_loss": loss(w_ND, w0_ND, task.x_train_PD, task.y_train_P, alpha=alpha, eps=eps),
        "test_loss": loss(w_ND, w0_ND, task.x_test_MD, task.y_test_M, alpha=alpha, eps=eps),
        "alignment": centred_alignment(kernel_PP, task.y_train_P),
        "kernel_distance": kernel_distance(kernel_PP, kernel0_PP),
        "kernel_distance_rel": kernel_distance(kernel_PP, kernel0_PP, relative=True),
        "weight_change": jnp.linalg.norm(w_ND - w0_ND) / jnp.linalg.norm(w0_ND)}


def eval_steps(num_steps: int, num_points: int) -> list:
    """About num_points log-spaced steps in [1, num_steps], always ending at num_steps."""
    steps = np.unique(np.round(np.logspace(0, np.log10(num_steps), num_points)).astype(int))
    return sorted(set(int(s) for s in steps) | {num_steps})


def train_and_evaluate(config, workdir: str, *,
                       log=study.log) -> dict:
    """Train one (alpha, eps) net by GD, resuming from workdir/checkpoints; returns the curves
    summary (the curves {step: metrics} go to workdir/curves.json)."""
    os.makedirs(workdir, exist_ok=True)
    t, m = config.task, config.model
    task = make_task(t.dim, t.num_train, t.num_test, config.seed)
    w0_ND = jax.random.normal(jax.random.PRNGKey(config.seed + 1), (m.width, t.dim))
    alpha, eps = jnp.float32(m.alpha), jnp.float32(m.eps)
    steps_fn = lambda w, n: _gd_steps(w, w0_ND, task.x_train_PD, task.y_train_P, n, alpha, eps,
                                      jnp.float32(learning_rate(config)))
    kernel0 = ntk(w0_ND, task.x_train_PD, alpha=alpha, eps=eps)
    measure = lambda w: _measure(w, w0_ND, task, kernel0, alpha, eps)

    manager = ckpt.make_manager(os.path.join(workdir, "checkpoints"), _checkpoint_config())
    curves_path = os.path.join(workdir, "curves.json")
    curves = study.read_json(curves_path, {"0": _floats(measure(w0_ND))})
    state = {"w": w0_ND, "step": jnp.zeros((), jnp.int32)}
    restored = ckpt.restore_latest(manager, ckpt.abstract_like(state), None)
    state = state if restored is None else restored
    writer = tb.make_writer(os.path.join(workdir, "tensorboard"))
    try:
        for step in eval_steps(config.train.num_steps, config.train.num_eval_points):
            done = int(state["step"])
            if step <= done:
                continue
            w = steps_fn(state["w"], step - done)
            state = {"w": w, "step": jnp.asarray(step, jnp.int32)}
            curves[str(step)] = row = _floats(measure(w))
            tb.write_scalars(writer, step, {f"lazy_rich/{k}": v for k, v in row.items()})
            ckpt.save(manager, step, state, None)
            study.write_json(curves_path, curves)
    finally:
        manager.wait_until_finished()
        manager.close()
        if writer is not None:
            writer.close()
    summary = summarise(curves, t.drop_fraction)
    log(summary_line(m, summary, t.drop_fraction))
    return {"alpha": m.alpha, "eps": m.eps, **summary}


def _checkpoint_config():
    c = ml_collections.ConfigDict()
    c.checkpoint = dict(max_to_keep=2, async_save=False, best_metric=None, best_mode="min")
    return c


def _floats(tree) -> dict:
    return {k: float(v) for k, v in jax.device_get(tree).items()}


def summarise(curves: dict, drop_fraction: float) -> dict:
    """Steps at which train and test loss first fall below drop_fraction of their initial value,
    and their ratio: a large ratio is grokking (test loss drops long after train loss)."""
    steps = sorted(int(s) for s in curves)
    first_below = {}
    for split in ("train", "test"):
        values = [-curves[str(s)][f"{split}_loss"] for s in steps]
        first_below[split] = first_step_above(steps, values,
                                              -drop_fraction * curves["0"][f"{split}_loss"])
    train_step, test_step = first_below["train"], first_below["test"]
    last = curves[str(steps[-1])]
    return {"train_drop_step": train_step, "test_drop_step": test_step,
            "ratio": None if not (train_step and test_step) else test_step / train_step,
            "final_train_loss": last["train_loss"], "final_test_loss": last["test_loss"],
            "initial_train_loss": curves["0"]["train_loss"],
            "initial_test_loss": curves["0"]["test_loss"], "steps": steps[-1],
            "final_alignment": last["alignment"], "initial_alignment": curves["0"]["alignment"],
            "final_kernel_distance_rel": last["kernel_distance_rel"]}


def summary_line(model, summary: dict, drop_fraction: float) -> str:
    """A run's result in words: drop steps, losses, its verdict ("-" for a drop not reached)."""
    step = lambda s: "-" if s is None else str(s)
    ratio = "-" if summary["ratio"] is None else f"{summary['ratio']:.3g}"
    return (f"alpha={model.alpha:g} eps={model.eps:g}: train loss "
            f"{summary['initial_train_loss']:.3g} -> {summary['final_train_loss']:.3g} (dropped at "
            f"step {step(summary['train_drop_step'])}), test loss "
            f"{summary['initial_test_loss']:.3g} -> {summary['final_test_loss']:.3g} (step "
            f"{step(summary['test_drop_step'])}), ratio {ratio}: "
            f"{verdict(summary, drop_fraction)}")


GROKKING_RATIO = 5.0  # test loss drops this many times later than train loss: grokking


def verdict(summary: dict, drop_fraction: float) -> str:
    train_step = summary["train_drop_step"]
    if train_step is None:
        return "train loss not fitted"
    if summary["final_train_loss"] > drop_fraction * summary["initial_train_loss"]:
        return "train loss rose again: GD unstable at this lr"
    if summary["test_drop_step"] is None and summary["final_train_loss"] < 1e-8:
        # Zero train loss leaves GD no gradient: the test loss can no longer fall.
        return "train interpolated, test loss frozen (lazy: never groks)"
    if summary["test_drop_step"] is None:
        return (f"test loss not dropped within {summary['steps']} steps (ratio > "
                f"{summary['steps'] / train_step:.3g})")
    if summary["ratio"] >= GROKKING_RATIO:
        return "delayed test drop (grokking)"
    return "test drops soon after train (no grokking)"


def _cell(value):
    return "-" if value is None else (f"{value:.3g}" if isinstance(value, float) else str(value))


def _series(curves, key):
    steps = sorted(int(s) for s in curves if int(s) > 0)  # log-x: step 0 is off the axis
    return steps, [curves[str(s)][key] for s in steps]


def plot(results: list, path: str) -> None:
    """results: [(alpha, eps, curves)]. One row per eps: loss vs step per alpha (train
    dashed), NTK alignment, ||K_t - K_0||."""
    eps_values = sorted({eps for _, eps, _ in results})
    fig, axes = plt.subplots(len(eps_values), 3, figsize=(15, 4.5 * len(eps_values)),
                             squeeze=False)
    for row, eps in zip(axes, eps_values, strict=True):
        runs = [(alpha, curves) for alpha, e, curves in results if e == eps]
        for i, (alpha, curves) in enumerate(runs):
            color = plt.cm.viridis(i / max(len(runs) - 1, 1))
            row[0].plot(*_series(curves, "train_loss"), color=color, ls="--", lw=0.8)
            row[0].plot(*_series(curves, "test_loss"), color=color, label=f"alpha={alpha:g}")
            row[1].plot(*_series(curves, "alignment"), color=color, label=f"alpha={alpha:g}")
            row[2].plot(*_series(curves, "kernel_distance_rel"), color=color)
        row[0].set(xscale="log", yscale="log", xlabel="GD step", ylabel="loss",
                   title=f"eps={eps:g}: test loss (train dashed)")
        row[1].set(xscale="log", xlabel="GD step", ylabel="centred alignment",
                   title="NTK-label alignment (train set)")
        row[2].set(xscale="log", yscale="log", xlabel="GD step",
                   ylabel="||K_t - K_0||_F / ||K_0||_F", title="NTK movement")
        for ax in row:
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report(config, results: list, workdir: str, png_path: str) -> tuple:
    """The loss, alignment and NTK-movement figure, and a table of the runs' summaries."""
    plot([(r["alpha"], r["eps"],
           study.read_json(os.path.join(workdir, "runs", r["name"], "curves.json")))
          for r in results], png_path)
    t, train = config.task, config.train
    lines = [
        f"D={t.dim}, P={t.num_train} train / {t.num_test} test, N={config.model.width}, lr = "
        f"{train.lr0:g} N / alpha^2, {train.num_steps} GD steps, no weight decay. A loss has "
        f"dropped when it is below {t.drop_fraction:g} of its initial value; ratio = test drop "
        f"step / train drop step; grokking when ratio >= {GROKKING_RATIO:g}.", "",
        "| eps | alpha | train drop step | test drop step | ratio | final train loss | "
        "final test loss (initial) | alignment init -> end | rel. ‖K_t - K_0‖_F | outcome |",
        "|" + "---|" * 10]
    for s in results:
        lines.append(
            f"| {s['eps']:g} | {s['alpha']:g} | {_cell(s['train_drop_step'])} | "
            f"{_cell(s['test_drop_step'])} | {_cell(s['ratio'])} | {s['final_train_loss']:.2e} | "
            f"{s['final_test_loss']:.3g} ({s['initial_test_loss']:.3g}) | "
            f"{s['initial_alignment']:.3f} -> {s['final_alignment']:.3f} | "
            f"{s['final_kernel_distance_rel']:.3g} | {verdict(s, t.drop_fraction)} |")
    return "Lazy-to-rich grokking (Kumar et al., ICLR 2024)", "\n".join(lines) + "\n"


def run_study(config, workdir: str, **kwargs) -> list:
    """Every selected run of config, resuming; the report after each. kwargs: study.run_study's
    command, out, report_only."""
    return study.run_study(config, workdir, study="lazy_rich", train_fn=train_and_evaluate,
                           report=report, **kwargs)


if __name__ == "__main__":
    study.main("experiments.lazy_rich", run_study, "configs/lazy_rich.py:kumar", "runs/lazy_rich")
