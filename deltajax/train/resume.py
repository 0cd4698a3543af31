"""Where a run starts: its checkpoint managers, and the state (and data position) it resumes."""

import os

from deltajax.train import checkpoint as ckpt


def make_managers(config, workdir: str) -> dict:
    """The run's checkpoint managers: 'last' (every checkpoint.every_steps) and 'best'."""
    managers = {}
    if config.checkpoint.every_steps:
        managers["last"] = ckpt.make_manager(os.path.join(workdir, "checkpoints"), config)
    if config.checkpoint.best_metric:
        managers["best"] = ckpt.make_manager(os.path.join(workdir, "checkpoints_best"), config,
                                             best=True)
    return managers


def resume(config, managers: dict, state, data_iter):
    """The latest checkpoint of this run, else of config.checkpoint.restore_dir, else state."""
    abstract = ckpt.abstract_like(state)
    restored = None
    if "last" in managers:
        restored = ckpt.restore_latest(managers["last"], abstract, data_iter)
    if restored is None and config.checkpoint.restore_dir:
        other = ckpt.make_manager(config.checkpoint.restore_dir, config)
        restored = ckpt.restore_latest(other, abstract, data_iter)
        other.close()
        if restored is None:
            raise ValueError(f"config.checkpoint.restore_dir={config.checkpoint.restore_dir!r} "
                             "holds no restorable checkpoint")
    return state if restored is None else restored
