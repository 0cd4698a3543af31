"""Schedules' shapes and WSM merge coefficients against the SGD identity they rest on."""

import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.train import schedules


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_wsd_warms_up_holds_then_decays_to_the_final_lr(shape):
    lr = schedules.wsd(1.0, num_steps=100, warmup_steps=10, decay_fraction=0.2,
                       decay_shape=shape, final_lr_fraction=0.1)
    values = np.array([float(lr(s)) for s in range(101)])
    np.testing.assert_allclose(values[:11], np.linspace(0, 1, 11), atol=1e-6)
    np.testing.assert_allclose(values[10:81], 1.0, atol=1e-6)
    assert np.all(np.diff(values[80:]) < 0)
    np.testing.assert_allclose(values[100], 0.1, atol=1e-6)
    midpoint = {"linear": 0.5, "cosine": 0.5, "1-sqrt": 1 - np.sqrt(0.5)}[shape]
    np.testing.assert_allclose(values[90], 0.1 + 0.9 * midpoint, atol=1e-6)


def test_cosine_warms_up_to_the_peak_then_decays_to_the_final_lr():
    lr = schedules.cosine(2.0, num_steps=50, warmup_steps=5, final_lr_fraction=0.0)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(2.0)
    assert float(lr(50)) == pytest.approx(0.0, abs=1e-6)
    assert float(lr(27)) == pytest.approx(1.0, abs=0.1)


def test_constant_schedule_with_warmup_reaches_and_keeps_the_peak():
    lr = schedules.constant(0.5, warmup_steps=4)
    assert [float(lr(s)) for s in (0, 2, 4, 100)] == pytest.approx([0.0, 0.25, 0.5, 0.5])


def test_wsd_rejects_an_unknown_decay_shape_and_an_overlapping_warmup():
    with pytest.raises(ValueError, match="decay shape"):
        schedules.wsd(1.0, 10, decay_shape="exp")
    with pytest.raises(ValueError, match="warmup_steps"):
        schedules.wsd(1.0, 10, warmup_steps=9, decay_fraction=0.5)


def test_merge_coefficients_follow_their_definition_and_sum_to_one():
    w = np.array([1.0, 0.75, 0.5, 0.2])
    c = schedules.merge_coefficients(w)
    np.testing.assert_allclose(c, [0.0, 0.25, 0.25, 0.3, 0.2])
    assert c.sum() == pytest.approx(1.0)
    assert schedules.wsm_decay_weights(4, "linear") == pytest.approx([1.0, 0.75, 0.5, 0.25])


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_merged_checkpoints_equal_sgd_with_the_decay_applied_to_each_block(shape):
    """Toy SGD on a quadratic at a constant lr, a checkpoint every 3 steps: merging the last
    k + 1 checkpoints equals theta_0 - sum_i w_i g_i with g_i the update of block i."""
    rng = np.random.default_rng(0)
    a_matrix = rng.normal(size=(5, 5))
    hessian = a_matrix @ a_matrix.T / 5 + np.eye(5)
    theta = {"w": rng.normal(size=5), "b": rng.normal(size=(2, 3))}
    checkpoints = []
    for step in range(3 * 6 + 1):
        if step % 3 == 0:
            checkpoints.append({k: v.copy() for k, v in theta.items()})
        theta = {"w": theta["w"] - 0.1 * hessian @ theta["w"], "b": theta["b"] * 0.9 - 0.01}
    window = checkpoints[-5:]                              # theta_0..theta_4 (k = 4 blocks)
    w = schedules.wsm_decay_weights(4, shape)
    merged = schedules.merge_checkpoints(window, w)
    for name in theta:
        blocks = [window[i - 1][name] - window[i][name] for i in range(1, 5)]
        expected = window[0][name] - sum(w_i * g_i for w_i, g_i in zip(w, blocks, strict=True))
        np.testing.assert_allclose(np.asarray(merged[name]), expected, rtol=1e-5, atol=1e-6)
        assert not np.allclose(expected, window[-1][name])  # the merge is not the last one


def test_merge_checkpoints_rejects_a_count_that_does_not_match_the_weights():
    params = [{"w": jnp.ones(2)}] * 3
    with pytest.raises(ValueError, match="params_list has 3"):
        schedules.merge_checkpoints(params, [1.0, 0.5, 0.2])
