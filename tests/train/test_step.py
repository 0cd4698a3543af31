"""The train step: masked loss, gradient accumulation, weight-decay mask, bf16 compute."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from deltajax.train import loss, step
from deltajax.train.config import merge_with_defaults
from deltajax.train.optimizer import decay_mask, make_optimizer
from tests.train.helpers import MODEL, TRAIN_SOURCE, VOCAB, tiny_config

BATCH = {k: np.stack([TRAIN_SOURCE[i][k] for i in range(8)]) for k in ("inputs", "targets")}


@functools.cache
def _setup(accum=1, dtype="float32"):
    config = merge_with_defaults(tiny_config(grad_accum_steps=accum, compute_dtype=dtype))
    tx, schedule = make_optimizer(config)
    state = step.init_state(MODEL, tx, jax.random.PRNGKey(0), jnp.asarray(BATCH["inputs"][:1]))
    fn = jax.jit(functools.partial(step.train_step, model=MODEL, tx=tx, schedule=schedule,
                                   grad_accum_steps=accum, compute_dtype=dtype))
    return state, fn


def test_loss_and_accuracy_count_only_positions_with_a_target():
    logits_BTV = jax.random.normal(jax.random.PRNGKey(1), (2, 5, VOCAB))
    targets_BT = jnp.array([[-100, 3, 4, -100, 1], [2, -100, -100, -100, -100]])
    sums = loss.masked_sums(logits_BTV, targets_BT)
    log_probs = jax.nn.log_softmax(logits_BTV)
    picks = [(0, 1, 3), (0, 2, 4), (0, 4, 1), (1, 0, 2)]
    expected = -np.mean([log_probs[b, t, v] for b, t, v in picks])
    assert float(sums["count"]) == 4
    np.testing.assert_allclose(loss.means(sums)["loss"], expected, rtol=1e-6)
    hits = np.mean([int(jnp.argmax(logits_BTV[b, t]) == v) for b, t, v in picks])
    np.testing.assert_allclose(loss.means(sums)["accuracy"], hits)


def test_a_batch_without_targets_gives_zero_loss_not_nan():
    sums = loss.masked_sums(jnp.zeros((1, 3, VOCAB)), jnp.full((1, 3), -100))
    assert float(loss.means(sums)["loss"]) == 0.0


def test_gradient_accumulation_gives_the_full_batch_update():
    state, full_step = _setup(accum=1)
    _, accum_step = _setup(accum=4)
    full_state, full_metrics = full_step(state, BATCH)
    accum_state, accum_metrics = accum_step(state, BATCH)
    for name in ("loss", "accuracy", "grad_norm"):
        np.testing.assert_allclose(accum_metrics[name], full_metrics[name], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 accum_state.params, full_state.params)
    assert int(accum_state.step) == 1


def test_weight_decay_skips_biases_norm_scales_and_embeddings():
    state, _ = _setup()
    mask = decay_mask(state.params, ("bias", "scale", "embedding"))
    assert mask["head"]["kernel"] and mask["mix"]["kernel"]
    assert not mask["head"]["bias"] and not mask["norm"]["scale"]
    assert not mask["embed"]["embedding"]
    # With zero gradients only decay moves parameters: exactly the masked-in ones.
    config = merge_with_defaults(tiny_config(schedule__name="constant", schedule__warmup_steps=0))
    tx, _ = make_optimizer(config)
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    updates, _ = tx.update(zeros, tx.init(state.params), state.params)
    moved = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
    assert moved == mask


def test_bf16_compute_keeps_float32_parameters_and_tracks_float32_loss():
    state, f32_step = _setup(dtype="float32")
    _, bf16_step = _setup(dtype="bfloat16")
    f32_state, f32_metrics = f32_step(state, BATCH)
    bf16_state, bf16_metrics = bf16_step(state, BATCH)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16_state.params))
    assert np.isfinite(float(bf16_metrics["loss"]))
    np.testing.assert_allclose(bf16_metrics["loss"], f32_metrics["loss"], rtol=2e-2)
    assert float(bf16_metrics["loss"]) != float(f32_metrics["loss"])  # bf16 really ran


def test_train_steps_lower_the_loss_on_a_fixed_batch():
    state, train = _setup()
    losses = []
    for _ in range(15):
        state, metrics = train(state, BATCH)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] - 0.1


def test_gradients_are_clipped_to_the_configured_global_norm_before_adam():
    config = merge_with_defaults(tiny_config(
        optimizer__grad_clip_norm=1e-3, optimizer__eps=1.0, optimizer__weight_decay=0.0,
        schedule__name="constant", schedule__warmup_steps=0))
    tx, _ = make_optimizer(config)
    state, _ = _setup()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 10.0), state.params)
    updates, _ = tx.update(grads, tx.init(state.params), state.params)
    # Adam's first bias-corrected update is -lr g / (|g| + eps); eps = 1 keeps the scale of g.
    scale = 1e-3 / float(step.global_norm(grads))
    lr = config.optimizer.learning_rate
    jax.tree.map(lambda u, g: np.testing.assert_allclose(
        u, -lr * g * scale / (jnp.abs(g * scale) + 1.0), rtol=1e-5), updates, grads)
