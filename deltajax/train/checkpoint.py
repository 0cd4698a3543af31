"""orbax checkpoints of the train state and the grain iterator, with a resume that tells a
checkpoint that cannot be read from one that does not match the run.

Saves go to a temporary directory that orbax renames when complete, and old steps are removed
only after a newer one is complete, so a crash or failed save never loses a saved checkpoint.
On restore, a step whose saved tree, shapes or dtypes differ from the run's state (a changed
model or optimizer config) stops the run with a ValueError and is never touched. A step that
cannot be read (damaged, half copied) is skipped with a warning; once an older step restores,
the skipped ones are renamed aside (never deleted) so that their step numbers can be saved
again. When no step can be read, the run stops and nothing is renamed.
"""

import os
from collections.abc import Mapping
from typing import Any, Optional

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from deltajax.train.schedules import merge_checkpoints

CORRUPT_PREFIX = "corrupt_step_"


def _handlers() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """The item handlers, registered up front so a fresh manager can read a step's metadata."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for args in (ocp.args.StandardSave, ocp.args.StandardRestore):
        registry.add("state", args)
    for args in (grain.checkpoint.CheckpointSave, grain.checkpoint.CheckpointRestore):
        registry.add("data", args)
    return registry


def make_manager(directory: str, config, *, best: bool = False) -> ocp.CheckpointManager:
    """Keep the last config.checkpoint.max_to_keep steps, or with best=True the best ones by
    config.checkpoint.best_metric (a key of the metrics passed to save)."""
    c = config.checkpoint
    options = ocp.CheckpointManagerOptions(
        max_to_keep=c.max_to_keep, create=True, enable_async_checkpointing=c.async_save,
        best_fn=(lambda metrics: float(metrics[c.best_metric])) if best else None,
        best_mode=c.best_mode, keep_checkpoints_without_metrics=not best)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 handler_registry=_handlers())


def reader(directory: str) -> ocp.CheckpointManager:
    """A read-only manager: restores from `directory` and never writes, renames or deletes."""
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 handler_registry=_handlers())


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iterator: Optional[grain.DatasetIterator], metrics: Optional[dict] = None) -> None:
    """Start an (async) save of state and the iterator position; returns once arrays are copied
    off the devices, so training may go on and overwrite them."""
    items = {"state": ocp.args.StandardSave(_global(state))}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
    manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def _global(state: Any) -> Any:
    """With several processes, arrays that live on one of this process's devices (the pmap
    loop's unreplicated state) become global arrays replicated over every process's devices:
    orbax saves only global arrays. Copies to the local devices, no collective; every process
    holds the same values (pmap all-reduces the gradients)."""
    if jax.process_count() == 1:
        return state
    replicated = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(jax.devices()), ("devices",)), jax.sharding.PartitionSpec())

    def to_global(x):
        if not (isinstance(x, jax.Array) and x.is_fully_addressable):
            return x
        copies = [jax.device_put(x, device) for device in replicated.addressable_devices]
        return jax.make_array_from_single_device_arrays(x.shape, replicated, copies)

    return jax.tree.map(to_global, state)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   data_iterator: Optional[grain.DatasetIterator], *, set_aside: bool = True,
                   name: Optional[str] = None) -> Optional[Any]:
    """The newest readable state (arrays placed as abstract_state's shardings); None when the
    manager holds no checkpoint.

    data_iterator is moved to the saved position of the step whose state restored, and only
    then. Raises ValueError when a step does not match abstract_state (nothing renamed) or
    when no step can be read. set_aside=False leaves unreadable steps where they are (another
    run's directory); name is how messages call the directory (default: its path)."""
    name = name or str(manager.directory)
    unreadable = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            saved = _saved_tree(manager, step)
        except Exception as error:  # orbax raises many types for damaged files
            unreadable.append(_skip(name, step, error))
            continue
        mismatch = tree_mismatch(saved, abstract_state)
        if mismatch:
            raise ValueError(
                f"checkpoint step {step} of {name} does not match this run's state: {mismatch}. "
                "It was written with another model or optimizer config; nothing was renamed or "
                "deleted. To resume it, run with the config that wrote it. "
                f"{_advice(manager, set_aside)}")
        try:
            state = restore_step(manager, step, abstract_state, data_iterator)
        except Exception as error:
            unreadable.append(_skip(name, step, error))
            continue
        if set_aside:
            for bad_step, _ in unreadable:
                _set_aside(manager, bad_step)
        return state
    if unreadable:
        listed = "; ".join(f"step {s}: {cause}" for s, cause in unreadable)
        raise ValueError(
            f"no checkpoint of {name} can be read ({listed}). Nothing was renamed or deleted. "
            f"{_advice(manager, set_aside)}")
    return None


def _advice(manager: ocp.CheckpointManager, own_run: bool) -> str:
    if own_run:
        return (f"To start fresh, use a new workdir or move {manager.directory} away; to start "
                "from another run's checkpoints, also set config.checkpoint.restore_dir.")
    return ("Point config.checkpoint.restore_dir at a run of this model and optimizer config, "
            "or unset it to start fresh.")


def restore_step(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
                 data_iterator: Optional[grain.DatasetIterator]) -> Any:
    """The state saved at `step`; data_iterator, if given, is moved to its saved position
    after the state restored."""
    state = _restore_items(manager, step, state=ocp.args.StandardRestore(abstract_state))
    if data_iterator is not None:
        _restore_items(manager, step, data=grain.checkpoint.CheckpointRestore(data_iterator))
    return state


def _restore_items(manager: ocp.CheckpointManager, step: int, **items) -> Any:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored[next(iter(items))]


def _skip(name: str, step: int, error: Exception) -> tuple[int, str]:
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else ""
    # tensorstore appends its whole JSON spec to the first line: keep the reason only.
    cause = f"{type(error).__name__}: {first if len(first) <= 200 else first[:200] + '...'}"
    logging.warning("checkpoint step %d of %s cannot be read (%s); trying the previous one",
                    step, name, cause)
    return step, cause


def _saved_tree(manager: ocp.CheckpointManager, step: int) -> Any:
    """The saved state's tree of array metadata (shape, dtype) at `step`; raises if unreadable."""
    metadata = manager.item_metadata(step)
    state = metadata["state"] if "state" in metadata else None
    if state is None:
        raise FileNotFoundError(f"step {step} holds no readable 'state' item")
    return getattr(state, "tree", state)


def tree_mismatch(saved: Any, abstract_state: Any) -> Optional[str]:
    """The first difference between a saved tree of array metadata and the run's state, as
    'path: what', or None when every path, shape and dtype agrees."""
    ours = dict(_leaves(ocp.tree.serialize_tree(abstract_state, keep_empty_nodes=True)))
    theirs = dict(_leaves(saved))
    for path, spec in ours.items():
        if path not in theirs:
            return f"{path} ({spec}) is in this run's state but not in the checkpoint"
        if theirs[path] != spec:
            return f"{path} is {theirs[path]} in the checkpoint but {spec} in this run"
    for path, spec in theirs.items():
        if path not in ours:
            return f"{path} ({spec}) is in the checkpoint but not in this run's state"
    return None


def _leaves(tree: Any, prefix: str = ""):
    """(dotted path, 'dtype[shape]') of each array of a tree as orbax serializes it (dicts and
    lists; empty nodes hold nothing), in the tree's own order: step, params, opt_state."""
    if isinstance(tree, Mapping):
        children = tree.items()
    elif isinstance(tree, (list, tuple)):
        children = enumerate(tree)
    elif tree is None:
        return
    else:
        yield prefix[:-1], f"{np.dtype(tree.dtype).name}{list(tree.shape)}"
        return
    for key, child in children:
        yield from _leaves(child, f"{prefix}{key}.")


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
            logging.warning("checkpoint step %d set aside as %s", step, target)
    ocp.multihost.sync_global_processes(f"deltajax_set_aside_{step}")
    manager.reload()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs with shardings: what StandardRestore needs to place restored arrays."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def load_params(directory: str, step: int) -> Any:
    """The parameters saved at `step` under `directory` (a run's checkpoints folder), on host."""
    with reader(directory) as manager:
        state = _restore_items(manager, step, state=ocp.args.StandardRestore())
    return jax.device_get(state["params"])


def merge_saved_checkpoints(directory: str, weights_w) -> tuple[Any, list]:
    """WSM: schedules.merge_checkpoints over the last len(weights_w) + 1 saved steps.

    Returns (merged params, the steps merged). Keep checkpoint.max_to_keep >= len(weights_w) + 1
    while training so the window is on disk."""
    with reader(directory) as manager:
        steps = sorted(manager.all_steps())
    needed = len(weights_w) + 1
    if len(steps) < needed:
        raise ValueError(f"{directory} holds {len(steps)} checkpoints {steps}; merging "
                         f"{len(weights_w)} blocks needs {needed}")
    window = steps[-needed:]
    return merge_checkpoints([load_params(directory, s) for s in window], weights_w), window
