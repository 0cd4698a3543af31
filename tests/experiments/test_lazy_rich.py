"""The lazy-vs-rich study: the analytic NTK, the kernel measures, GD resume and the script."""

import functools
import glob

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.lazy_rich import get_config
from deltajax import study as study_lib
from deltajax.analysis import centred_alignment, kernel_distance
from experiments import lazy_rich as study


def test_ntk_matches_the_explicit_jacobian_product():
    task = study.make_task(dim=5, num_train=7, num_test=3, seed=0)
    w0 = jax.random.normal(jax.random.PRNGKey(1), (6, 5))
    w = w0 + 0.3 * jax.random.normal(jax.random.PRNGKey(2), (6, 5))  # away from init too
    jacobian = jax.jit(jax.jacfwd(lambda v: study.network(v, w0, task.x_train_PD, alpha=3.0,
                                                          eps=0.25)))
    for params in (w0, w):
        jacobian_PW = jacobian(params).reshape(7, -1)
        np.testing.assert_allclose(study.ntk(params, task.x_train_PD, alpha=3.0, eps=0.25),
                                   jacobian_PW @ jacobian_PW.T, rtol=1e-4, atol=1e-7)


def test_network_is_centred_and_target_is_quadratic():
    task = study.make_task(dim=4, num_train=5, num_test=2, seed=3)
    w0 = jnp.ones((3, 4))
    np.testing.assert_allclose(study.network(w0, w0, task.x_train_PD, alpha=8.0, eps=0.5), 0.0)
    assert task.x_train_PD.shape == (5, 4) and bool(jnp.all(task.y_train_P >= 0))
    with pytest.raises(ValueError, match="num_train"):
        study.make_task(dim=4, num_train=0, num_test=2, seed=0)


def test_alignment_is_one_for_the_label_kernel_and_shift_invariant():
    y = jnp.array([1.0, -2.0, 0.5, 3.0])
    assert float(centred_alignment(jnp.outer(y, y) + 7.0, y)) == pytest.approx(1.0, abs=1e-6)
    # H I H = H: alignment ||y~||^2 / (||H||_F ||y~||^2) = 1 / sqrt(P - 1).
    assert float(centred_alignment(jnp.eye(4), y)) == pytest.approx(3 ** -0.5, rel=1e-5)
    assert float(kernel_distance(jnp.eye(4), jnp.eye(4))) == 0.0
    assert float(kernel_distance(2 * jnp.eye(4), jnp.eye(4), relative=True)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="kernel_PP"):
        centred_alignment(jnp.eye(3), y)


def test_learning_rate_scales_as_width_over_alpha_squared():
    config = get_config("kumar")
    config.model.alpha = 4.0
    assert study.learning_rate(config) == pytest.approx(config.train.lr0 * 500 / 16)
    assert [r["name"] for r in get_config("kumar").sweep][:2] == ["a0.25-e0.02", "a1-e0.02"]


def test_study_resumes_gd_to_the_uninterrupted_result_and_writes_its_report(tmp_path):
    quiet = functools.partial(study.train_and_evaluate, log=lambda _: None)
    run = functools.partial(study_lib.run_study, study="lazy_rich", train_fn=quiet,
                            report=study.report, out=str(tmp_path / "table"))
    config = get_config("smoke")
    config.only = "a4-*"
    config.train.num_steps = 10
    run(config, str(tmp_path))
    config.train.num_steps = 20     # a changed run resumes from its last checkpoint
    run(config, str(tmp_path))
    curves = study_lib.read_json(str(tmp_path / "runs" / "a4-e0.25" / "curves.json"))
    straight = study.train_and_evaluate(study_lib.run_config(config, config.sweep[1]),
                                        str(tmp_path / "straight"), log=lambda _: None)
    assert "10" in curves and "20" in curves
    np.testing.assert_allclose(curves["20"]["train_loss"], straight["final_train_loss"],
                               rtol=1e-5)
    assert curves["20"]["train_loss"] < curves["0"]["train_loss"]
    resumed = study_lib.read_json(str(tmp_path / "runs" / "a4-e0.25" / "result.json"))
    assert [resumed[k] for k in ("train_below_step", "test_below_step", "delay")] == \
        [straight[k] for k in ("train_below_step", "test_below_step", "delay")]
    assert {"alignment_test", "alignment_train"} <= set(curves["20"])
    table = (tmp_path / "table.md").read_text()
    assert table.count("| 0.25 |") == 1 and "| 0.25 | 4 |" in table
    assert (tmp_path / "table.png").stat().st_size > 10_000
    assert '"width": 16' in (tmp_path / "table.json").read_text()
    run_dir = tmp_path / "runs" / "a4-e0.25"
    assert glob.glob(str(run_dir / "tensorboard" / "events.*"))
    assert glob.glob(str(run_dir / "checkpoints" / "20"))


def test_delay_is_the_test_minus_the_train_step_below_the_absolute_threshold():
    # A hand-made curve: train MSE below 0.1 first at step 2 (and rising again after), test at 5.
    train = [1.0, 0.5, 0.08, 0.2, 0.05, 0.01]
    test = [1.2, 1.1, 0.9, 0.3, 0.13, 0.09]
    first = jnp.full((2,), -1, jnp.int32)
    for step, pair in enumerate(zip(train, test, strict=True)):
        first = study.record_first_below(first, step, jnp.array(pair), 0.1)
    assert first.tolist() == [2, 5]
    curves = {str(s): {"train_loss": a, "test_loss": b, "alignment_test": 0.1,
                       "alignment_train": 0.2, "kernel_distance_rel": 0.0}
              for s, (a, b) in enumerate(zip(train, test, strict=True))}
    summary = study.summarise(curves, 0.1, first_below=first)
    assert (summary["train_below_step"], summary["test_below_step"], summary["delay"]) == (2, 5, 3)
    # Our relative measure beside it: below 0.1 of the start (0.1 and 0.12), steps 2 and 5 too.
    assert (summary["train_drop_step"], summary["test_drop_step"]) == (2, 5)
    never = study.summarise(curves, 0.1, first_below=np.array([2, -1]))
    assert never["test_below_step"] is None and never["delay"] is None
    assert "delay -" in study.delay_line(never, 0.1)


def _tiny_task():
    task = study.make_task(dim=8, num_train=20, num_test=30, seed=0)  # the smoke preset's shapes
    return task, jax.random.normal(jax.random.PRNGKey(1), (16, 8))


def test_gd_records_the_first_step_each_loss_is_below_the_threshold_and_stops_converged():
    task, w0 = _tiny_task()
    # alpha, eps, lr, threshold, convergence tolerance (0: never stop)
    gd = lambda state, n, tol=0.0: study._gd_steps(state, w0, task, n, *map(jnp.float32, (
        1.0, 0.25, 16.0, 0.2, tol)))
    whole = gd(study.initial_state(w0), 30)
    chunked = gd(gd(study.initial_state(w0), 17), 13)
    # The same f32 updates in one loop or two: they differ by fusion and rounding only.
    np.testing.assert_allclose(chunked["w"], whole["w"], rtol=1e-5, atol=1e-6)
    # Reference: the losses after every one-step update, compared with the threshold in numpy.
    state, losses = study.initial_state(w0), []
    for _ in range(31):
        losses.append([float(study.loss(state["w"], w0, x, y, alpha=1.0, eps=0.25))
                       for x, y in ((task.x_train_PD, task.y_train_P),
                                    (task.x_test_MD, task.y_test_M))])
        state = gd(state, 1)
    below = np.array(losses) < 0.2
    expected = [int(np.argmax(below[:, i])) if below[:, i].any() else -1 for i in (0, 1)]
    assert expected[0] > 0 and expected[1] > expected[0]  # both cross, test later: a delay
    assert whole["first_below"].tolist() == expected == chunked["first_below"].tolist()
    assert int(whole["step"]) == 30 and int(whole["stop_step"]) == -1
    # A loose tolerance: converged at the authors' first check (step 6), and stays there.
    stopped = gd(study.initial_state(w0), 30, tol=1.0)
    assert int(stopped["stop_step"]) == 6 == int(stopped["step"])
    np.testing.assert_allclose(gd(stopped, 5)["w"], stopped["w"])


def test_test_set_alignment_matches_numpy():
    task, w0 = _tiny_task()
    w = w0 + 0.5 * jax.random.normal(jax.random.PRNGKey(3), w0.shape)
    kernel0 = study.ntk(w0, task.x_train_PD, alpha=1.0, eps=0.25)
    row = study._measure(w, w0, task, kernel0, jnp.float32(1.0), jnp.float32(0.25))

    def numpy_alignment(x, y):
        x, y, wn = np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(w, np.float64)
        slope = 1.0 + 0.25 * x @ wn.T
        kernel = (1.0 / 16) ** 2 * (slope @ slope.T) * (x @ x.T)
        h = np.eye(len(y)) - 1.0 / len(y)
        centred, yc = h @ kernel @ h, y - y.mean()
        return yc @ centred @ yc / (np.linalg.norm(centred) * yc @ yc)

    test = numpy_alignment(task.x_test_MD, task.y_test_M)
    train = numpy_alignment(task.x_train_PD, task.y_train_P)
    assert abs(test - train) > 1e-3  # the two sets give different numbers: which one is used shows
    # f32 kernels of 20-30 points against numpy's float64: a few f32 ulps per sum.
    assert float(row["alignment_test"]) == pytest.approx(test, rel=1e-4)
    assert float(row["alignment_train"]) == pytest.approx(train, rel=1e-4)


def test_p_sweep_varies_the_training_points_at_one_alpha_and_eps():
    config = get_config("kumar")
    p_runs = [r for r in config.sweep if r["name"].startswith("P")]
    assert [r["name"] for r in p_runs] == ["P100-a4-e0.02", "P200-a4-e0.02", "P1100-a4-e0.02",
                                           "P2200-a4-e0.02"]
    study_lib.check_config(config, "lazy_rich")
    merged = study_lib.run_config(config, p_runs[2])
    assert (merged.task.num_train, merged.model.alpha, merged.model.eps) == (1100, 4.0, 0.02)
    assert (config.task.loss_threshold, config.train.lr0, config.train.num_steps) == \
        (0.1, 20.0, 110_000)
    # The report's P section: the P runs and the default-P run at the same (alpha, eps).
    results = [{"num_train": p, "alpha": a, "eps": e} for p, a, e in
               ((550, 4.0, 0.02), (550, 1.0, 0.02), (1100, 4.0, 0.02), (100, 4.0, 0.02))]
    alpha_runs, by_p = study.split_sweeps(results, 550)
    assert [r["alpha"] for r in alpha_runs] == [4.0, 1.0]
    assert [r["num_train"] for r in by_p] == [100, 550, 1100]
