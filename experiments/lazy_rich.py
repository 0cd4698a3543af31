r"""Grokking as the transition from lazy to rich training (Kumar et al., ICLR 2024).

Inputs x ~ N(0, I / D), target y = (beta . x)^2 / 2 with beta ~ N(0, I); a two-layer net with
N hidden units, first-layer weights W ~ N(0, I) and a fixed mean readout,

    f(x) = alpha * (mean_i phi(w_i . x) - mean_i phi(w0_i . x)),   phi(z) = z + (eps / 2) z^2,

centred so that f = 0 at initialisation whatever alpha (the output-scale laziness of Chizat and
Bach). Full-batch gradient descent on the mean squared error (the authors' loss, no 1/2) with
lr = lr0 * N / alpha^2 moves f at an alpha-independent speed while the weights move as 1 / alpha:
large alpha trains lazily (a kernel regression with the initial NTK), small alpha learns features
from the start. The grokking delay is the authors': step(test MSE < threshold) - step(train MSE <
threshold), tracked at every GD step; the NTK-label alignment is measured on the test set (theirs)
and on the train set.

    python -m experiments.lazy_rich --config=configs/lazy_rich.py:kumar \
        --workdir=runs/lazy_rich_v2 --out=benchmarks/results/cpu-lazy-rich

(`python experiments/lazy_rich.py ...` runs the same.) Each run lives in <workdir>/runs/<name>/
(a<alpha>-e<eps>, or P<P>-a<alpha>-e<eps> in the P sweep: orbax checkpoints, TensorBoard,
curves.json) and resumes there.
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
    """The mean squared error, as the authors train and threshold it (no factor 1/2)."""
    return jnp.mean((network(w_ND, w0_ND, x_PD, alpha=alpha, eps=eps) - y_P) ** 2)


def ntk(w_ND, x_PD, *, alpha, eps):
    """The empirical NTK [P, P]: df/dw_i = (alpha / N) phi'(w_i . x) x, so
    K(x, x') = (alpha / N)^2 sum_i phi'(w_i . x) phi'(w_i . x') (x . x')."""
    slope_PN = 1.0 + eps * (x_PD @ w_ND.T)
    scale = (alpha / w_ND.shape[0]) ** 2
    return scale * (slope_PN @ slope_PN.T) * (x_PD @ x_PD.T)


def learning_rate(config) -> float:
    return config.train.lr0 * config.model.width / config.model.alpha ** 2


def record_first_below(first_below_2, step, losses_2, threshold):
    """first_below_2 [train, test]: the first step at which each loss was below threshold, -1
    while it has not been; an entry already set stays (the first crossing counts, as in the
    authors' code, even if the loss rises again)."""
    return jnp.where((first_below_2 < 0) & (losses_2 < threshold),
                     jnp.asarray(step, first_below_2.dtype), first_below_2)


LOOKBACK = 5  # the authors' convergence test compares each loss with the one 4 steps before


def initial_state(w0_ND) -> dict:
    """The GD state, checkpointed whole: weights, step, first steps below the threshold
    ([train, test], -1 until then), the last LOOKBACK [train, test] losses, and the step at
    which training converged (-1 while it has not)."""
    return {"w": w0_ND, "step": jnp.zeros((), jnp.int32),
            "first_below": jnp.full((2,), -1, jnp.int32),
            "history": jnp.full((2, LOOKBACK), jnp.inf, jnp.float32),
            "stop_step": jnp.full((), -1, jnp.int32)}


@jax.jit
def _gd_steps(state: dict, w0_ND, task: Task, num_steps, alpha, eps, lr, threshold, tol):
    """Up to num_steps full-batch GD updates from state, checking both losses against threshold
    at every step (the delay's resolution is one step, as the authors'). Stops early, as the
    authors' delay sweep does, once both losses moved less than tol over the last LOOKBACK - 1
    steps and the test loss is below its initial value (tol = 0: never). Every argument is
    traced, so one compilation serves every alpha, eps and step count of a sweep (one per P)."""
    kw = dict(alpha=alpha, eps=eps)
    test0 = loss(w0_ND, w0_ND, task.x_test_MD, task.y_test_M, **kw)
    end = state["step"] + num_steps

    def body(s):
        train_loss, grad = jax.value_and_grad(loss)(s["w"], w0_ND, task.x_train_PD,
                                                    task.y_train_P, **kw)
        losses_2 = jnp.stack([train_loss, loss(s["w"], w0_ND, task.x_test_MD, task.y_test_M,
                                               **kw)])
        history = jnp.concatenate([s["history"][:, 1:], losses_2[:, None]], axis=1)
        # The authors check from their 6th recorded loss (after update 6) on.
        converged = ((s["step"] > LOOKBACK) & (losses_2[1] < test0)
                     & jnp.all(jnp.abs(history[:, -1] - history[:, 0]) < tol))
        return {"w": jnp.where(converged, s["w"], s["w"] - lr * grad),
                "step": jnp.where(converged, s["step"], s["step"] + 1),
                "first_below": record_first_below(s["first_below"], s["step"], losses_2,
                                                  threshold),
                "history": history,
                "stop_step": jnp.where(converged, s["step"], -1)}

    state = jax.lax.while_loop(lambda s: (s["step"] < end) & (s["stop_step"] < 0), body, state)
    # The last step's losses: checked again (to no effect) at the start of a next call.
    losses_2 = jnp.stack([loss(state["w"], w0_ND, x, y, **kw) for x, y in
                          ((task.x_train_PD, task.y_train_P), (task.x_test_MD, task.y_test_M))])
    return {**state, "first_below": record_first_below(state["first_below"], state["step"],
                                                       losses_2, threshold)}


@jax.jit
def _measure(w_ND, w0_ND, task: Task, kernel0_PP, alpha, eps) -> dict:
    kernel_PP = ntk(w_ND, task.x_train_PD, alpha=alpha, eps=eps)
    return {
        "train_loss": loss(w_ND, w0_ND, task.x_train_PD, task.y_train_P, alpha=alpha, eps=eps),
        "test_loss": loss(w_ND, w0_ND, task.x_test_MD, task.y_test_M, alpha=alpha, eps=eps),
        # The authors align the NTK on the test set; the train-set one is kept beside it.
        "alignment_test": centred_alignment(ntk(w_ND, task.x_test_MD, alpha=alpha, eps=eps),
                                            task.y_test_M),
        "alignment_train": centred_alignment(kernel_PP, task.y_train_P),
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
    constants = (jnp.float32(learning_rate(config)), jnp.float32(t.loss_threshold),
                 jnp.float32(config.train.converge_tol))
    steps_fn = lambda state, n: _gd_steps(state, w0_ND, task, n, alpha, eps, *constants)
    kernel0 = ntk(w0_ND, task.x_train_PD, alpha=alpha, eps=eps)
    measure = lambda w: _measure(w, w0_ND, task, kernel0, alpha, eps)

    manager = ckpt.make_manager(os.path.join(workdir, "checkpoints"), _checkpoint_config())
    curves_path = os.path.join(workdir, "curves.json")
    curves = study.read_json(curves_path, {"0": _floats(measure(w0_ND))})
    state = initial_state(w0_ND)
    restored = ckpt.restore_latest(manager, ckpt.abstract_like(state), None)
    state = state if restored is None else restored
    writer = tb.make_writer(os.path.join(workdir, "tensorboard"))
    try:
        for step in eval_steps(config.train.num_steps, config.train.num_eval_points):
            done = int(state["step"])
            if step <= done:
                continue
            if int(state["stop_step"]) >= 0:
                break  # converged: the curves end at the stop step
            state = steps_fn(state, step - done)
            step = int(state["step"])
            curves[str(step)] = row = _floats(measure(state["w"]))
            tb.write_scalars(writer, step, {f"lazy_rich/{k}": v for k, v in row.items()})
            ckpt.save(manager, step, state, None)
            study.write_json(curves_path, curves)
    finally:
        manager.wait_until_finished()
        manager.close()
        if writer is not None:
            writer.close()
    summary = summarise(curves, t.drop_fraction, first_below=jax.device_get(state["first_below"]))
    stop = int(state["stop_step"])
    summary["stop_step"] = None if stop < 0 else stop
    log(summary_line(m, summary, t.drop_fraction))
    log(delay_line(summary, t.loss_threshold))
    return {"alpha": m.alpha, "eps": m.eps, "num_train": t.num_train,
            "loss_threshold": t.loss_threshold, **summary}


def _checkpoint_config():
    c = ml_collections.ConfigDict()
    c.checkpoint = dict(max_to_keep=2, async_save=False, best_metric=None, best_mode="min")
    return c


def _floats(tree) -> dict:
    return {k: float(v) for k, v in jax.device_get(tree).items()}


def summarise(curves: dict, drop_fraction: float, first_below=(-1, -1)) -> dict:
    """The authors' delay from first_below ([train, test] step at which each loss first fell
    below the absolute threshold, -1 if never): test step - train step. Beside it our relative
    measure from the curves: the steps at which train and test loss first fall below
    drop_fraction of their initial value, and their ratio (a large ratio is grokking)."""
    train_below, test_below = (None if int(s) < 0 else int(s) for s in first_below)
    steps = sorted(int(s) for s in curves)
    first_below = {}
    for split in ("train", "test"):
        values = [-curves[str(s)][f"{split}_loss"] for s in steps]
        first_below[split] = first_step_above(steps, values,
                                              -drop_fraction * curves["0"][f"{split}_loss"])
    train_step, test_step = first_below["train"], first_below["test"]
    last = curves[str(steps[-1])]
    return {"train_below_step": train_below, "test_below_step": test_below,
            "delay": None if train_below is None or test_below is None else
            test_below - train_below,
            "train_drop_step": train_step, "test_drop_step": test_step,
            "ratio": None if not (train_step and test_step) else test_step / train_step,
            "final_train_loss": last["train_loss"], "final_test_loss": last["test_loss"],
            "initial_train_loss": curves["0"]["train_loss"],
            "initial_test_loss": curves["0"]["test_loss"], "steps": steps[-1],
            "final_alignment_test": last["alignment_test"],
            "initial_alignment_test": curves["0"]["alignment_test"],
            "final_alignment_train": last["alignment_train"],
            "initial_alignment_train": curves["0"]["alignment_train"],
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


def delay_line(summary: dict, threshold: float) -> str:
    """The authors' delay in words ("-" for a threshold not reached)."""
    step = lambda s: "-" if s is None else str(s)
    return (f"  delay (Kumar et al.): train MSE < {threshold:g} at step "
            f"{step(summary['train_below_step'])}, test MSE < {threshold:g} at step "
            f"{step(summary['test_below_step'])}: delay {step(summary['delay'])}")


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


def _steps_cell(summary) -> str:
    return (f"{summary['steps']} (converged)" if summary.get("stop_step") is not None
            else str(summary["steps"]))


def _series(curves, key):
    steps = sorted(int(s) for s in curves if int(s) > 0)  # log-x: step 0 is off the axis
    return steps, [curves[str(s)][key] for s in steps]


def split_sweeps(results: list, default_train: int) -> tuple:
    """(alpha-sweep runs: those at the default P, P-sweep runs: every run, the default-P one
    included, at an (alpha, eps) that some run with another P has), the latter by P."""
    at_default = [r for r in results if r["num_train"] == default_train]
    swept = {(r["alpha"], r["eps"]) for r in results if r["num_train"] != default_train}
    by_p = sorted((r for r in results if (r["alpha"], r["eps"]) in swept),
                  key=lambda r: r["num_train"])
    return at_default, by_p


def plot(alpha_runs: list, p_runs: list, path: str) -> None:
    """Runs as (result, curves). One row per eps of the alpha sweep: loss vs step per alpha
    (train dashed), NTK-label alignment (test solid, train dashed), ||K_t - K_0||; then, with a
    P sweep, a row of loss vs step per P, test alignment per P, and the delay vs P."""
    eps_values = sorted({r["eps"] for r, _ in alpha_runs})
    rows = len(eps_values) + bool(p_runs)
    fig, axes = plt.subplots(rows, 3, figsize=(15, 4.5 * rows), squeeze=False)
    for row, eps in zip(axes, eps_values, strict=False):
        runs = [(r, curves) for r, curves in alpha_runs if r["eps"] == eps]
        for i, (r, curves) in enumerate(runs):
            color = plt.cm.viridis(i / max(len(runs) - 1, 1))
            label = f"alpha={r['alpha']:g}"
            row[0].plot(*_series(curves, "train_loss"), color=color, ls="--", lw=0.8)
            row[0].plot(*_series(curves, "test_loss"), color=color, label=label)
            row[1].plot(*_series(curves, "alignment_test"), color=color, label=label)
            row[1].plot(*_series(curves, "alignment_train"), color=color, ls="--", lw=0.8)
            row[2].plot(*_series(curves, "kernel_distance_rel"), color=color)
        row[0].set(xscale="log", yscale="log", xlabel="GD step", ylabel="MSE",
                   title=f"eps={eps:g}: test loss (train dashed)")
        row[1].set(xscale="log", xlabel="GD step", ylabel="centred alignment",
                   title="NTK-label alignment: test set (train dashed)")
        row[2].set(xscale="log", yscale="log", xlabel="GD step",
                   ylabel="||K_t - K_0||_F / ||K_0||_F", title="NTK movement (train set)")
        row[0].legend(fontsize=7)
    if p_runs:
        row = axes[-1]
        for i, (r, curves) in enumerate(p_runs):
            color = plt.cm.plasma(i / max(len(p_runs), 1))
            row[0].plot(*_series(curves, "train_loss"), color=color, ls="--", lw=0.8)
            row[0].plot(*_series(curves, "test_loss"), color=color, label=f"P={r['num_train']}")
            row[1].plot(*_series(curves, "alignment_test"), color=color)
        reached = [(r["num_train"], r["delay"]) for r, _ in p_runs if r["delay"] is not None]
        if reached:
            row[2].plot(*zip(*reached, strict=True), "o-", label="delay")
        never = [r["num_train"] for r, _ in p_runs if r["delay"] is None]
        if never:  # drawn at 0 so that the panel still names every P of the sweep
            row[2].plot(never, [0] * len(never), "rx", label="a loss never below the threshold")
        row[2].legend(fontsize=7)
        r0 = p_runs[0][0]
        row[0].set(xscale="log", yscale="log", xlabel="GD step", ylabel="MSE",
                   title=f"alpha={r0['alpha']:g}, eps={r0['eps']:g}: test loss per P "
                         "(train dashed)")
        row[1].set(xscale="log", xlabel="GD step", ylabel="centred alignment",
                   title="NTK-label alignment (test set)")
        row[2].set(xscale="log", xlabel="P (training points)", ylabel="GD steps",
                   title=f"delay: step(test MSE < {r0['loss_threshold']:g}) - step(train)")
        row[0].legend(fontsize=7)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report(config, results: list, workdir: str, png_path: str) -> tuple:
    """The loss, alignment and NTK-movement figure, and the alpha-sweep and P-sweep tables."""
    t, train = config.task, config.train
    alpha_runs, p_runs = split_sweeps(results, t.num_train)
    with_curves = lambda runs: [
        (r, study.read_json(os.path.join(workdir, "runs", r["name"], "curves.json")))
        for r in runs]
    alpha_curves, p_curves = with_curves(alpha_runs), with_curves(p_runs)
    plot(alpha_curves, p_curves, png_path)
    # ||w - w0|| / ||w0|| at the end, from the curves (the paper: the weights grow as it groks).
    moved = lambda curves: curves[str(max(int(k) for k in curves))]["weight_change"]
    thr = f"{t.loss_threshold:g}"
    lines = [
        f"D={t.dim}, {t.num_test} test points, N={config.model.width}, loss = mean squared "
        f"error, lr = {train.lr0:g} N / alpha^2, full-batch GD for {train.num_steps} steps or "
        f"until converged (both losses moved < {train.converge_tol:g} over {LOOKBACK - 1} steps, "
        f"test loss below its start: the authors' stop), no weight decay. **delay** (Kumar et "
        f"al.'s measure) = step(test MSE < {thr}) - step(train MSE < {thr}), checked at every "
        f"step. **ratio** (ours) = test drop step / train drop step, a "
        f"loss having dropped when below {t.drop_fraction:g} of its initial value (read on "
        f"{train.num_eval_points} log-spaced evaluations); outcome by the ratio, grokking when "
        f">= {GROKKING_RATIO:g}. NTK-label alignment: centred, on the test set (the authors') "
        "and the train set.", "",
        f"## alpha x eps sweep, P = {t.num_train}", "",
        f"| eps | alpha | train < {thr} | test < {thr} | delay | train drop step | test drop "
        "step | ratio | final train MSE | final test MSE (initial) | alignment test: init -> "
        "end | train: init -> end | rel. ‖K_t - K_0‖_F | ‖w - w0‖ / ‖w0‖ | GD steps | outcome |",
        "|" + "---|" * 16]
    for s, curves in alpha_curves:
        lines.append(
            f"| {s['eps']:g} | {s['alpha']:g} | {_cell(s['train_below_step'])} | "
            f"{_cell(s['test_below_step'])} | {_cell(s['delay'])} | "
            f"{_cell(s['train_drop_step'])} | {_cell(s['test_drop_step'])} | "
            f"{_cell(s['ratio'])} | {s['final_train_loss']:.2e} | "
            f"{s['final_test_loss']:.3g} ({s['initial_test_loss']:.3g}) | "
            f"{s['initial_alignment_test']:.3f} -> {s['final_alignment_test']:.3f} | "
            f"{s['initial_alignment_train']:.3f} -> {s['final_alignment_train']:.3f} | "
            f"{s['final_kernel_distance_rel']:.3g} | {moved(curves):.3g} | {_steps_cell(s)} | "
            f"{verdict(s, t.drop_fraction)} |")
    if p_runs:
        lines += [
            "", f"## P sweep, alpha = {p_runs[0]['alpha']:g}, eps = {p_runs[0]['eps']:g}", "",
            f"| P | train < {thr} | test < {thr} | delay | train drop step | test drop step | "
            "ratio | final train MSE | final test MSE (initial) | alignment test: init -> end | "
            "rel. ‖K_t - K_0‖_F | ‖w - w0‖ / ‖w0‖ | GD steps | outcome |",
            "|" + "---|" * 14]
        for s, curves in p_curves:
            lines.append(
                f"| {s['num_train']} | {_cell(s['train_below_step'])} | "
                f"{_cell(s['test_below_step'])} | {_cell(s['delay'])} | "
                f"{_cell(s['train_drop_step'])} | {_cell(s['test_drop_step'])} | "
                f"{_cell(s['ratio'])} | {s['final_train_loss']:.2e} | "
                f"{s['final_test_loss']:.3g} ({s['initial_test_loss']:.3g}) | "
                f"{s['initial_alignment_test']:.3f} -> {s['final_alignment_test']:.3f} | "
                f"{s['final_kernel_distance_rel']:.3g} | {moved(curves):.3g} | {_steps_cell(s)} | "
                f"{verdict(s, t.drop_fraction)} |")
    return "Lazy-to-rich grokking (Kumar et al., ICLR 2024)", "\n".join(lines) + "\n"


def run_study(config, workdir: str, **kwargs) -> list:
    """Every selected run of config, resuming; the report after each. kwargs: study.run_study's
    command, out, report_only."""
    return study.run_study(config, workdir, study="lazy_rich", train_fn=train_and_evaluate,
                           report=report, **kwargs)


if __name__ == "__main__":
    study.main("experiments.lazy_rich", run_study, "configs/lazy_rich.py:kumar", "runs/lazy_rich")
