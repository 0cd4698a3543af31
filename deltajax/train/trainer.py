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
from absl import logging

from deltajax.data import iterator_from_config
from deltajax.train import guards, preemption, preflight, resume, sharding
from deltajax.train import logging as tb
from deltajax.train import step as step_lib
from deltajax.train.config import merge_with_defaults
from deltajax.train.evaluate import evaluate
from deltajax.train.optimizer import make_optimizer
from deltajax.train.run_record import RunRecord
from deltajax.train.saver import Saver


class FitResult(NamedTuple):
    state: step_lib.TrainState   # final state (replicated over the mesh)
    history: list                # one dict of host floats per step run by this call (of the
                                 # whole run when it had finished before this call)
    eval_metrics: dict           # the last evaluation ({} if none)
    eval_history: list = []      # {"step", "eval/..."} per evaluation of this call (or run)
    stopped_early: bool = False  # config.eval.early_stop_* was met
    preempted: bool = False      # stopped by SIGTERM/SIGINT after saving; run again to resume


def fit(config, model: nn.Module, train_source: Sequence, workdir: str, *,
        eval_source: Optional[Sequence] = None, devices: Optional[Sequence] = None,
        stop_at: Optional[int] = None) -> FitResult:
    """Train `model` on `train_source` for config.num_steps, resuming from workdir if it holds
    a checkpoint. Writes workdir/checkpoints, workdir/tensorboard and the run's metrics
    (run_record). A run that finished (or stopped early) before returns its result untrained.

    stop_at ends this call after that step (as a preemption would); a later call resumes.
    SIGTERM or SIGINT ends it after the current step, with a checkpoint, and preempted=True.
    A non-finite loss, gradient norm or state raises FloatingPointError, a failed save
    saver.SaveError; neither leaves a non-finite or partial checkpoint behind.
    devices defaults to every device of every host."""
    config = merge_with_defaults(config)
    sharding.maybe_initialize_distributed(config)
    devices = jax.devices() if devices is None else list(devices)
    preflight.check_run(config, model, train_source, eval_source, num_devices=len(devices),
                        num_processes=jax.process_count())
    # From here on, a preemption notice stops training after the first step at the latest.
    with preemption.Watcher() as watcher:
        return _train(config, model, train_source, workdir, eval_source, devices, stop_at,
                      watcher)


def _train(config, model, train_source, workdir, eval_source, devices, stop_at,
           watcher: preemption.Watcher) -> FitResult:
    mesh = sharding.make_mesh(config, devices)
    tx, schedule = make_optimizer(config)
    data_iter = iterator_from_config(train_source, config)

    state_sharding, state = init_sharded_state(config, model, tx, mesh,
                                               np.asarray(train_source[0]["inputs"]))
    saver = Saver(resume.make_managers(config, workdir))
    try:
        state = resume.resume(config, saver.managers, state, data_iter)
    except BaseException:
        saver.close(raise_errors=False)
        raise
    start = int(state.step)
    record = RunRecord(workdir, start)
    done = _finished_result(config, state, start, record)
    if done is not None:
        saver.close(raise_errors=True)
        return done

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
    # Resuming after an earlier call logged steps past this checkpoint (it was killed, or
    # stopped between checkpoints), readers drop those steps, so that each is seen once.
    writer = tb.make_writer(os.path.join(workdir, "tensorboard"),
                            purge_step=start + 1 if start and record.logged_past_start else None)
    if start == 0:
        tb.write_config(writer, config)
    end = config.num_steps if stop_at is None else min(stop_at, config.num_steps)
    bar = tb.Progress(config.num_steps, start, end, enabled=config.logging.progress_bar,
                      every_steps=config.logging.every_steps)
    steps = _StepLog(config, writer, bar, record, end, pmap)
    eval_metrics, eval_history, stopped_early, preempted = {}, [], False, False
    failed = True
    try:
        for step in range(start + 1, end + 1):
            saver.check()
            host_batch = next(data_iter)
            if pmap:
                state, metrics = train_fn(state, sharding.split_for_pmap(host_batch, len(local)))
            else:
                state, metrics = train_fn(state, sharding.shard_batch(host_batch, mesh))
            # Read the previous step's metrics while this one runs: the host waits for the
            # device only on steps that evaluate, save or end.
            steps.read_pending()
            steps.add(step, metrics, host_batch["inputs"].shape[1])
            preempted = watcher.reached(step)
            save_due = "last" in saver and (
                preempted or _due(step, config.checkpoint.every_steps, end))
            eval_due = eval_source is not None and _due(step, config.eval.every_steps,
                                                        config.num_steps)
            if save_due or eval_due or preempted or step == end:
                steps.read_pending()
            canonical = _Lazy(lambda s=state: _unreplicate(s) if pmap else s)
            # Whatever is saved at this step is checked first, once.
            check_finite = _Lazy(lambda s=step, c=canonical: guards.check_state(s, c()))
            hist_every = config.logging.histogram_every_steps
            if hist_every and step % hist_every == 0:
                tb.write_histograms(writer, step, canonical().params)
            if eval_due:
                eval_metrics = evaluate(config, eval_fn, canonical().params, eval_source,
                                        None if pmap else mesh)
                tb.write_scalars(writer, step, eval_metrics)
                eval_history.append({"step": step, **eval_metrics})
                if "best" in saver:
                    check_finite()
                    saver.save("best", step, canonical(), None, eval_metrics)
                stopped_early = _early_stop(config.eval, eval_metrics)
            if save_due or ("last" in saver and stopped_early):
                check_finite()
                saver.save("last", step, canonical(), data_iter)
                record.write(step, eval_history, eval_metrics, stopped_early)
            if preempted:
                _stop_for_preemption(saver, writer, watcher.signal_name, step)
            if stopped_early or preempted:
                break
        if steps.history:
            record.write(steps.history[-1]["step"], eval_history, eval_metrics, stopped_early,
                         ended=True)
        failed = False
    finally:  # pending async saves of finite states complete even when training stops
        bar.close()
        try:
            saver.close(raise_errors=not failed)
        finally:
            if writer is not None:
                writer.close()
    return FitResult(_unreplicate(state) if pmap else state, steps.history, eval_metrics,
                     eval_history, stopped_early, preempted)


def _stop_for_preemption(saver: Saver, writer, signal_name: str, step: int) -> None:
    """The save of `step` on disk and the logs flushed, before fit returns."""
    if writer is not None:
        writer.flush()
    if "last" not in saver:
        logging.warning("%s: stopped after step %d; config.checkpoint.every_steps=0, so nothing "
                        "was saved", signal_name, step)
        return
    saver.wait()
    logging.warning("%s: stopped after step %d and saved it in %s; run the same command again "
                    "to resume from step %d", signal_name, step, saver.directory("last"), step)


def _finished_result(config, state, start: int, record: RunRecord) -> Optional[FitResult]:
    """The result of a run that had reached num_steps or stopped early, or None."""
    summary = record.prior_summary or {}
    eval_metrics = summary.get("eval_metrics", {})
    # Stopped early and still would with this config's early-stop setting.
    early = (summary.get("stopped_early", False) and start > 0
             and config.eval.early_stop_metric in eval_metrics
             and _early_stop(config.eval, eval_metrics))
    if start < config.num_steps and not early:
        return None
    logging.info("the run in this workdir finished at step %d: returning its result", start)
    return FitResult(state, record.prior_history, eval_metrics, record.prior_eval_history,
                     bool(early))


class _StepLog:
    """Each step's metrics read from the device one step late, checked, logged and kept."""

    def __init__(self, config, writer, bar, record: RunRecord, end: int, pmap: bool):
        self._config, self._writer, self._bar, self._record = config, writer, bar, record
        self._end, self._pmap = end, pmap
        self._pending = None
        self._last_time = time.perf_counter()
        self.history = []

    def add(self, step: int, metrics: dict, seq_len: int) -> None:
        self._pending = (step, metrics, seq_len)

    def read_pending(self) -> None:
        """Wait for the pending step, check it is finite, then log it (no-op if none)."""
        if self._pending is None:
            return
        step, metrics, seq_len = self._pending
        self._pending = None
        values = jax.device_get(metrics)
        metrics = {k: float(np.ravel(v)[0]) if self._pmap else float(v)
                   for k, v in values.items()}
        # The interval between two steps' results: the device's step time once the loop runs
        # ahead, with each save's, evaluation's and log's share included.
        now = time.perf_counter()
        metrics["step_time_s"] = now - self._last_time
        metrics["tokens_per_s"] = self._config.global_batch_size * seq_len / (now - self._last_time)
        self._last_time = now
        guards.check_metrics(step, metrics)
        entry = {"step": step, **metrics}
        self.history.append(entry)
        self._record.add(entry)
        self._bar.update(step, metrics)
        if step % self._config.logging.every_steps == 0 or step == self._end:
            tb.write_scalars(self._writer, step, {f"train/{k}": v for k, v in metrics.items()
                                                  if k != "tokens"})


class _Lazy:
    """A value computed once, and only if a log, eval or save needs it."""

    _UNSET = object()

    def __init__(self, make):
        self._make, self._value = make, self._UNSET

    def __call__(self):
        if self._value is self._UNSET:
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
    """One replica of the pmap state, on one device. `x[0]` would be a computation over this
    process's devices; with several processes their gloo cliques can pair up across
    processes and hang (or mix data), so the replica is read from one local shard instead."""
    return jax.tree.map(lambda x: x.addressable_shards[0].data[0], state)


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

