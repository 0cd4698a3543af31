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
    """The latest checkpoint of this run, else of config.checkpoint.restore_dir, else state.

    data_iter moves to the position saved with the restored state. Raises ValueError when a
    checkpoint does not match state (another model or optimizer config) or none can be read:
    a run never silently starts over beside checkpoints it could not use."""
    abstract = ckpt.abstract_like(state)
    restored = None
    if "last" in managers:
        restored = ckpt.restore_latest(managers["last"], abstract, data_iter)
    restore_dir = config.checkpoint.restore_dir
    if restored is None and restore_dir:
        name = f"config.checkpoint.restore_dir={restore_dir!r}"
        with ckpt.reader(restore_dir) as other:  # another run's checkpoints: never modified
            restored = ckpt.restore_latest(other, abstract, data_iter, set_aside=False,
                                           name=name)
        if restored is None:
            raise ValueError(f"{name} holds no checkpoint")
    return state if restored is None else restored
