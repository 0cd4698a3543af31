"""The one rule for values that shapes cannot check, shared by the ops and the models.

Concrete values out of the domain raise a ValueError naming the argument. Traced values (under
jit, grad, vmap) cannot raise, so the caller turns a traced 'invalid' flag into NaN outputs with
`poison`, whose VJP carries the NaN into every gradient as well: never a silently wrong number or
a zero gradient.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


def concrete(x) -> Optional[np.ndarray]:
    """The values of x, or None when x is traced (inside jit, grad, vmap, ...)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def any_invalid(flags) -> Optional[jax.Array]:
    """One traced flag from several (None entries skipped); None when there are none."""
    flags = [f for f in flags if f is not None]
    return jnp.any(jnp.stack(flags)) if flags else None


def poison(invalid: Optional[jax.Array], tree):
    """Every floating array of `tree` times NaN where `invalid`, else unchanged (times one).

    A product rather than jnp.where(invalid, nan, x): where's VJP sends a zero cotangent into x,
    so the gradients would come back as silent zeros; the product's VJP multiplies them by NaN.
    """
    if invalid is None:
        return tree

    def apply(x):
        if x is None or not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            return x
        return x * jnp.where(invalid, jnp.nan, 1.0).astype(jnp.result_type(x))
    return jax.tree_util.tree_map(apply, tree)


def first(values: np.ndarray, bad: np.ndarray):
    """The first offending value, for messages."""
    return values[bad].flat[0].item()
