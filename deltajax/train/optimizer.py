"""AdamW with decoupled weight decay masked by parameter path, and global-norm clipping."""

from collections.abc import Sequence

import jax
import optax

from deltajax.train import schedules
from deltajax.train.config import FLA_NO_DECAY_NAMES  # noqa: F401  (its public home)


def decay_mask(params, no_decay_names: Sequence[str]):
    """A pytree of bools like params: False where a path component (module or parameter name)
    is one of no_decay_names, e.g. "bias", "scale" (norms), "embedding"."""
    names = tuple(no_decay_names)

    def decays(path, _):
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return not any(key in names for key in keys)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(tx, schedule) from config.optimizer and config.schedule."""
    o = config.optimizer
    schedule = schedules.from_config(config)
    adamw = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                        mask=lambda params: decay_mask(params, o.no_decay_names))
    if o.grad_clip_norm:
        return optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), adamw), schedule
    return adamw, schedule
