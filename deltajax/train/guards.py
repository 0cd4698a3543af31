"""Finite or not: what fit checks before it records a step or saves a state."""

import math

import jax
import jax.numpy as jnp


@jax.jit
def all_finite(tree) -> jax.Array:
    """One device reduction: True when every floating leaf of tree is finite."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def check_metrics(step: int, metrics: dict) -> None:
    """Raise FloatingPointError naming the step if its loss or gradient norm is not finite."""
    bad = {k: metrics[k] for k in ("loss", "grad_norm") if not math.isfinite(metrics[k])}
    if bad:
        raise FloatingPointError(
            f"step {step}: " + ", ".join(f"{k}={v}" for k, v in bad.items()) + " is not finite; "
            "training stopped and the newest checkpoint (saved before this step) is kept")


def check_state(step: int, state) -> None:
    """Raise FloatingPointError if state (params, optimizer state) holds a NaN or inf."""
    if not bool(all_finite((state.params, state.opt_state))):
        raise FloatingPointError(
            f"step {step}: the parameters or optimizer state are not finite after the update "
            "(learning rate or loss scale?); it was not saved, and the newest checkpoint (saved "
            "before this step) is kept")
