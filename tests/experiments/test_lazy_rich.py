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
    table = (tmp_path / "table.md").read_text()
    assert table.count("| 0.25 |") == 1 and "| 0.25 | 4 |" in table
    assert (tmp_path / "table.png").stat().st_size > 10_000
    assert '"width": 16' in (tmp_path / "table.json").read_text()
    run_dir = tmp_path / "runs" / "a4-e0.25"
    assert glob.glob(str(run_dir / "tensorboard" / "events.*"))
    assert glob.glob(str(run_dir / "checkpoints" / "20"))
