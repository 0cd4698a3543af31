"""fit: the training loop over a model and a grain source, with resume, evaluation and logging.

The same call runs on one CPU and on many hosts: the config decides the mesh, and each host
feeds its own rows of every global batch.
"""

import functools
import os
import time
from collections.abc import Sequence
from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deltajax.data import make_dataset, make_iterator
from deltajax.train import checkpoint as ckpt
from deltajax.train import logging as tb
from deltajax.train import resume, sharding
from deltajax.train import step as step_lib
from deltajax.train.config import merge_with_defaults, validate_config
from deltajax.train.evaluate import evaluate
from deltajax.train.optimizer import make_optimizer


class FitResult(NamedTuple):
    state: step_lib.TrainState   # final state (replicated over the mesh)
    history: list                # one dict of host floats per step run by this call
    eval_metrics: dict           # the last evaluation ({} if none)
    eval_history: list = []      # {"step", "eval/..."} per evaluation of this call
    stopped_early: bool = False  # config.eval.early_stop_* was met


def fit(config, model: nn.Module, train_source: Sequence, workdir: str, *,
        eval_source: Optional[Sequence] = None, devices: Optional[Sequence] = None,
        stop_at: Optional[int] = None) -> FitResult:
    """Train `model` on `train_source` for config.num_steps, resuming from workdir if it holds
    a checkpoint. Writes workdir/checkpoints, workdir/tensorboard.

    stop_at ends this call after that step (as a preemption would); a later call resumes.
    devices defaults to every device of every host."""
    config = merge_with_defaults(config)
    sharding.maybe_initialize_distributed(config)
    devices = jax.devices() if devices is None else list(devices)
    validate_config(config, num_devices=len(devices), num_processes=jax.process_count())
    if len(train_source) < config.global_batch_size:
        raise ValueError(f"train_source has {len(train_source)} examples, fewer than "
                         f"config.global_batch_size={config.global_batch_size}")
    mesh = sharding.make_mesh(config, devices)
    tx, schedule = make_optimizer(config)
    dataset = make_dataset(train_source, seed=config.seed,
                           global_batch_size=config.global_batch_size,
                           shuffle=config.data.shuffle, num_epochs=config.data.num_epochs)
    data_iter = make_iterator(dataset, prefetch_threads=config.data.prefetch_threads,
                              prefetch_buffer=config.data.prefetch_buffer)

    state_sharding, state = init_sharded_state(config, model, tx, mesh,
                                               np.asarray(train_source[0]["inputs"]))
    managers = resume.make_managers(config, workdir)
    state = resume.resume(config, managers, state, data_iter)
    start = int(state.step)

    pmap = config.mesh.parallelism == "pmap"
    if pmap:
        local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
        train_fn = step_lib.pmap_train_step(config, model=model, tx=tx, schedule=schedule)
        # One copy per local device on a leading axis; pmap places slice i on device i.
        state = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (len(local), *x.shape)),
                             state)
    else:
        train_fn = step_lib.jit_train_step(config, model=model, tx=tx, schedule=schedule,
                                           state_shardings=state_sharding,
                                           batch_sharding=sharding.batch_sharding(mesh))
    eval_fn = jax.jit(functools.partial(step_lib.eval_step, model=model,
                                        compute_dtype=config.compute_dtype))
    writer = tb.make_writer(os.path.join(workdir, "tensorboard"))
    if start == 0:
        tb.write_config(writer, config)
    end = config.num_steps if stop_at is None else min(stop_at, config.num_steps)
    bar = tb.progress_bar(config.num_steps, start, config.logging.progress_bar)
    history, eval_metrics, eval_history, stopped_early = [], {}, [], False
    try:
        last_time = time.perf_counter()
        for step in range(start + 1, end + 1):
            host_batch = next(data_iter)
            if pmap:
                state, metrics = train_fn(state, sharding.split_for_pmap(host_batch, len(local)))
                metrics = jax.tree.map(lambda x: x[0], metrics)
            else:
                state, metrics = train_fn(state, sharding.shard_batch(host_batch, mesh))
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            now = time.perf_counter()
            metrics["step_time_s"] = now - last_time
            metrics["tokens_per_s"] = config.global_batch_size * host_batch["inputs"].shape[1] / (
                now - last_time)
            last_time = now
            if not np.isfinite(metrics["loss"]) or not np.isfinite(metrics["grad_norm"]):
                raise FloatingPointError(f"step {step}: loss={metrics['loss']}, grad_norm="
                                         f"{metrics['grad_norm']}; the last checkpoint is kept")
            history.append({"step": step, **metrics})
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
            if step % config.logging.every_steps == 0 or step == end:
                tb.write_scalars(writer, step, {f"train/{k}": v for k, v in metrics.items()
                                                if k != "tokens"})
            canonical = _Lazy(lambda s=state: _unreplicate(s) if pmap else s)
            hist_every = config.logging.histogram_every_steps
            if hist_every and step % hist_every == 0:
                tb.write_histograms(writer, step, canonical().params)
            if eval_source is not None and _due(step, config.eval.every_steps, config.num_steps):
                eval_metrics = evaluate(config, eval_fn, canonical().params, eval_source,
                                        None if pmap else mesh)
                tb.write_scalars(writer, step, eval_metrics)
                eval_history.append({"step": step, **eval_metrics})
                if managers.get("best") is not None:
                    ckpt.save(managers["best"], step, canonical(), None, eval_metrics)
                stopped_early = _early_stop(config.eval, eval_metrics)
            if "last" in managers and (stopped_early or
                                       _due(step, config.checkpoint.every_steps, end)):
                ckpt.save(managers["last"], step, canonical(), data_iter)
            if stopped_early:
                break
    finally:  # pending async saves complete even when training stops on an error
        bar.close()
        for manager in managers.values():
            manager.wait_until_finished()
            manager.close()
        if writer is not None:
            writer.close()
    return FitResult(_unreplicate(state) if pmap else state, history, eval_metrics, eval_history,
                     stopped_early)


class _Lazy:
    """The unreplicated state, computed once and only if a log, eval or save needs it."""

    def __init__(self, make):
        self._make, self._value = make, None

    def __call__(self):
        if self._value is None:
            self._value = self._make()
        return self._value


def _early_stop(eval_config, eval_metrics: dict) -> bool:
    if eval_config.early_stop_metric is None:
        return False
    if eval_config.early_stop_metric not in eval_metrics:
        raise ValueError(f"config.eval.early_stop_metric={eval_config.early_stop_metric!r} is not "
                         f"one of the eval metrics {sorted(eval_metrics)}")
    value = eval_metrics[eval_config.early_stop_metric]
    if eval_config.early_stop_mode == "max":
        return value >= eval_config.early_stop_value
    return value <= eval_config.early_stop_value


def _due(step: int, every: int, last: int) -> bool:
    return bool(every) and (step % every == 0 or step == last)


def _unreplicate(state):
    return jax.tree.map(lambda x: x[0], state)


def init_sharded_state(config, model, tx, mesh, example_inputs_T):
    """(state shardings, state) with the state made directly in its shardings, never whole on
    one device. example_inputs_T: one sequence of token ids, for shapes."""
    tokens_1T = jnp.asarray(example_inputs_T[None, :], jnp.int32)
    init = functools.partial(step_lib.init_state, model, tx, tokens_BT=tokens_1T)
    rng = jax.random.PRNGKey(config.seed)
    state_sharding = sharding.tree_shardings(jax.eval_shape(init, rng), mesh)
    return state_sharding, jax.jit(init, out_shardings=state_sharding)(rng)


def train_and_evaluate(config, workdir: str, *, model: Optional[nn.Module] = None,
                       train_source: Optional[Sequence] = None,
                       eval_source: Optional[Sequence] = None, **fit_kwargs) -> FitResult:
    """The entry point of experiments and notebooks: fit with defaults for what isn't passed.

    Without a model, builds deltajax.models.LanguageModel(ModelConfig(**config.model)); without
    sources, uses the synthetic copy task of config.data."""
    full = merge_with_defaults(config)
    if model is None:
        from deltajax.models import LanguageModel, ModelConfig  # only this default needs models
        model = LanguageModel(ModelConfig(**full.model.to_dict()))
    if train_source is None:
        from deltajax.data import CopySource
        d = full.data
        train_source = CopySource(d.num_train_examples, d.seq_len, d.vocab_size, seed=full.seed)
        eval_source = CopySource(d.num_eval_examples, d.seq_len, d.vocab_size,
                                 seed=full.seed + 1) if eval_source is None else eval_source
    return fit(config, model, train_source, workdir, eval_source=eval_source, **fit_kwargs)

