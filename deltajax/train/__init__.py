"""The training stack: config schema, optax schedules, train/eval steps, orbax checkpoints,
TensorBoard logging, meshes, and the fit loop (preemption saves, finite checks, save errors)."""

from deltajax.train.config import default_config, merge_with_defaults, validate_config
from deltajax.train.saver import SaveError
from deltajax.train.schedules import merge_checkpoints, merge_coefficients, wsm_decay_weights
from deltajax.train.step import TrainState, eval_step, init_state, train_step
from deltajax.train.trainer import FitResult, fit, init_sharded_state, train_and_evaluate

__all__ = ["FitResult", "SaveError", "TrainState", "default_config", "eval_step", "fit",
           "init_state", "init_sharded_state", "merge_checkpoints", "merge_coefficients",
           "merge_with_defaults", "train_and_evaluate", "train_step", "validate_config",
           "wsm_decay_weights"]
