"""orbax checkpoints of the train state and the grain iterator, with resume that skips damage.

Saves go to a temporary directory that orbax renames when complete, and old steps are removed
only after a newer one is complete, so a crash or failed save never loses a saved checkpoint.
A step directory that cannot be restored (corrupt, half copied) is renamed aside, with a
warning, and the previous step is used.
"""

import os
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from deltajax.train.schedules import merge_checkpoints

CORRUPT_PREFIX = "corrupt_step_"


def make_manager(directory: str, config, *, best: bool = False) -> ocp.CheckpointManager:
    """Keep the last config.checkpoint.max_to_keep steps, or with best=True the best ones by
    config.checkpoint.best_metric (a key of the metrics passed to save)."""
    c = config.checkpoint
    options = ocp.CheckpointManagerOptions(
        max_to_keep=c.max_to_keep, create=True, enable_async_checkpointing=c.async_save,
        best_fn=(lambda metrics: float(metrics[c.best_metric])) if best else None,
        best_mode=c.best_mode, keep_checkpoints_without_metrics=not best)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iterator: Optional[grain.DatasetIterator], metrics: Optional[dict] = None) -> None:
    """Start an (async) save of state and the iterator position; returns once arrays are copied
    off the devices, so training may go on and overwrite them."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
    manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   data_iterator: Optional[grain.DatasetIterator]) -> Optional[Any]:
    """The newest restorable state (arrays placed as abstract_state's shardings), or None.

    data_iterator is moved to the saved position in place. Unrestorable steps are set aside."""
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            return restore_step(manager, step, abstract_state, data_iterator)
        except Exception as error:  # orbax raises many types for damaged files
            logging.warning("checkpoint step %d in %s cannot be restored (%s: %s); using the "
                            "previous one", step, manager.directory, type(error).__name__, error)
            _set_aside(manager, step)
    return None


def restore_step(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
                 data_iterator: Optional[grain.DatasetIterator]) -> Any:
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return manager.restore(step, args=ocp.args.Composite(**items))["state"]


def _set_aside(manager: ocp.CheckpointManager, step: int) -> None:
    """Rename the step directory (never delete it) so a later save of that step can succeed."""
    manager.wait_until_finished()
    if jax.process_index() == 0:
        source = os.path.join(manager.directory, str(step))
        target = os.path.join(manager.directory, f"{CORRUPT_PREFIX}{step}")
        suffix = 0
        while os.path.exists(target):
            suffix += 1
            target = os.path.join(manager.directory, f"{CORRUPT_PREFIX}{step}.{suffix}")
        if os.path.isdir(source):
            os.rename(source, target)
    ocp.multihost.sync_global_processes(f"deltajax_set_aside_{step}")
    manager.reload()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs with shardings: what StandardRestore needs to place restored arrays."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _reader(directory: str) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    return ocp.CheckpointManager(os.path.abspath(directory), item_names=("state", "data"),
                                 options=options)


def load_params(directory: str, step: int) -> Any:
    """The parameters saved at `step` under `directory` (a run's checkpoints folder), on host."""
    with _reader(directory) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return jax.device_get(restored["state"]["params"])


def merge_saved_checkpoints(directory: str, weights_w) -> tuple[Any, list]:
    """WSM: schedules.merge_checkpoints over the last len(weights_w) + 1 saved steps.

    Returns (merged params, the steps merged). Keep checkpoint.max_to_keep >= len(weights_w) + 1
    while training so the window is on disk."""
    with _reader(directory) as manager:
        steps = sorted(manager.all_steps())
    needed = len(weights_w) + 1
    if len(steps) < needed:
        raise ValueError(f"{directory} holds {len(steps)} checkpoints {steps}; merging "
                         f"{len(weights_w)} blocks needs {needed}")
    window = steps[-needed:]
    return merge_checkpoints([load_params(directory, s) for s in window], weights_w), window
