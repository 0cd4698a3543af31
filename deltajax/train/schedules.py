"""Learning-rate schedules (optax) and WSM checkpoint merging.

WSM (warmup-stable-merge) trains at a constant rate after warmup and saves a checkpoint every
N steps; instead of decaying the rate it averages the last checkpoints theta_0..theta_k (theta_0
starts the merge window). With g_i = theta_{i-1} - theta_i the update of block i, a decay curve
w_1..w_k (the lr multiplier of block i) would have given theta_0 - sum_i w_i g_i, which equals
sum_j c_j theta_j with c_0 = 1 - w_1, c_j = w_j - w_{j+1} (0 < j < k), c_k = w_k: merging
emulates the decay without retraining.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from deltajax.train.config import DECAY_SHAPES


def constant(peak_lr: float, warmup_steps: int = 0) -> optax.Schedule:
    if warmup_steps == 0:
        return optax.constant_schedule(peak_lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak_lr, warmup_steps), optax.constant_schedule(peak_lr)],
        [warmup_steps])


def cosine(peak_lr: float, num_steps: int, warmup_steps: int = 0,
           final_lr_fraction: float = 0.0) -> optax.Schedule:
    """Linear warmup from 0 to peak_lr, then a cosine to final_lr_fraction * peak_lr."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak_lr, warmup_steps=warmup_steps,
        decay_steps=max(num_steps, warmup_steps + 1), end_value=final_lr_fraction * peak_lr)


def decay_curve(progress: jax.Array, shape: str) -> jax.Array:
    """From 1 at progress 0 to 0 at progress 1, in one of DECAY_SHAPES."""
    progress = jnp.clip(progress, 0.0, 1.0)
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    if shape == "1-sqrt":
        return 1.0 - jnp.sqrt(progress)
    raise ValueError(f"decay shape must be one of {DECAY_SHAPES}, got {shape!r}")


def wsd(peak_lr: float, num_steps: int, warmup_steps: int = 0, decay_fraction: float = 0.2,
        decay_shape: str = "1-sqrt", final_lr_fraction: float = 0.0) -> optax.Schedule:
    """Warmup-stable-decay: linear warmup, constant peak_lr, then the last decay_fraction of
    num_steps decays to final_lr_fraction * peak_lr along decay_shape."""
    decay_curve(jnp.float32(0.0), decay_shape)  # rejects an unknown shape now, not under jit
    decay_steps = max(int(round(decay_fraction * num_steps)), 1)
    decay_start = num_steps - decay_steps
    if decay_start < warmup_steps:
        raise ValueError(f"WSD: warmup_steps={warmup_steps} overlaps the decay, which starts at "
                         f"step {decay_start} (decay_fraction={decay_fraction})")
    final = final_lr_fraction * peak_lr

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak_lr * step / max(warmup_steps, 1)
        shape = decay_curve((step - decay_start) / decay_steps, decay_shape)
        decayed = final + (peak_lr - final) * shape
        return jnp.where(step < warmup_steps, warm, jnp.where(step < decay_start, peak_lr, decayed))

    return schedule


def from_config(config) -> optax.Schedule:
    """The schedule named by config.schedule.name, with config.optimizer.learning_rate as peak.

    "wsm" is warmup then constant: the decay happens afterwards, by merge_checkpoints."""
    s, peak = config.schedule, config.optimizer.learning_rate
    if s.name in ("constant", "wsm"):
        return constant(peak, s.warmup_steps)
    if s.name == "cosine":
        return cosine(peak, config.num_steps, s.warmup_steps, s.final_lr_fraction)
    if s.name == "wsd":
        return wsd(peak, config.num_steps, s.warmup_steps, s.decay_fraction, s.decay_shape,
                   s.final_lr_fraction)
    raise ValueError(f"config.schedule.name={s.name!r} is unknown")


def wsm_decay_weights(num_blocks: int, shape: str = "linear") -> np.ndarray:
    """w_1..w_k: the lr multiplier of each of the k merged blocks, a decay curve sampled at the
    start of each block (w_1 = 1, falling toward 0)."""
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be at least 1, got {num_blocks}")
    progress = np.arange(num_blocks) / num_blocks
    return np.asarray(decay_curve(jnp.asarray(progress, jnp.float32), shape), np.float64)


def merge_coefficients(weights_w: Sequence[float]) -> np.ndarray:
    """c_0..c_k from w_1..w_k: c_0 = 1 - w_1, c_j = w_j - w_{j+1}, c_k = w_k. They sum to 1."""
    w = np.asarray(weights_w, np.float64)
    if w.ndim != 1 or w.size < 1:
        raise ValueError(f"weights_w must be a non-empty 1-D sequence, got shape {w.shape}")
    padded = np.concatenate([[1.0], w, [0.0]])
    return padded[:-1] - padded[1:]


def merge_checkpoints(params_list: Sequence, weights_w: Sequence[float]):
    """sum_j c_j theta_j over params_list = [theta_0, ..., theta_k] (pytrees of one structure)."""
    coefficients = merge_coefficients(weights_w)
    if len(params_list) != coefficients.size:
        raise ValueError(f"params_list has {len(params_list)} checkpoints; weights_w of length "
                         f"{coefficients.size - 1} needs {coefficients.size} (theta_0..theta_k)")

    def merge(*leaves):
        acc = sum(float(c) * leaf.astype(jnp.float32)
                  for c, leaf in zip(coefficients, leaves, strict=True))
        return acc.astype(leaves[0].dtype)

    return jax.tree.map(merge, *params_list)

