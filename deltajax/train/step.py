"""The training state and the pure train and eval steps."""

import functools
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from deltajax.train import loss as loss_lib


@flax.struct.dataclass
class TrainState:
    step: jax.Array    # int32 scalar: optimizer updates done
    params: Any
    opt_state: Any


def init_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
               tokens_BT: jax.Array) -> TrainState:
    params = model.init(rng, tokens_BT)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def _cast(params, dtype):
    return jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p,
                        params)


def _model_inputs(batch: dict) -> tuple:
    """The model's positional inputs: the tokens, and the segment ids of packed batches (models
    without packing need not take them)."""
    if "segment_ids" in batch:
        return batch["inputs"], batch["segment_ids"]
    return (batch["inputs"],)


def global_norm(tree) -> jax.Array:
    """The L2 norm of all leaves together (optax renamed its helper across versions)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _psum(tree, axis_name):
    return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def train_step(state: TrainState, batch: dict, *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               grad_accum_steps: int = 1, compute_dtype: str = "float32",
               axis_name: Optional[str] = None) -> tuple[TrainState, dict]:
    """One optimizer update on the batch {"inputs", "targets": int32 [B, T]}, and for packed
    sequences "segment_ids" [B, T] (LanguageModel's segment_ids_BT; the targets that cross a
    segment end are the data's to mask with IGNORE_INDEX).

    The loss is the mean over every unmasked position of the batch; with grad_accum_steps = A
    the batch runs as A microbatches whose gradients add up to that same mean. Under pmap pass
    the mapped axis_name: the sums are psum'd so the update is the global batch's."""
    count = _psum(jnp.sum((batch["targets"] != loss_lib.IGNORE_INDEX).astype(jnp.float32)),
                  axis_name)
    normaliser = jnp.maximum(count, 1.0)

    def loss_fn(params, micro):
        logits_BTV = model.apply({"params": _cast(params, jnp.dtype(compute_dtype))},
                                 *_model_inputs(micro))
        sums = loss_lib.masked_sums(logits_BTV, micro["targets"])
        return sums["loss_sum"] / normaliser, sums

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum_steps == 1:
        (_, sums), grads = grad_fn(state.params, batch)
    else:
        # Microbatch j takes rows j, j + A, j + 2A, ...: each device keeps its own rows.
        micro_ABT = jax.tree.map(
            lambda x: jnp.swapaxes(x.reshape(-1, grad_accum_steps, *x.shape[1:]), 0, 1), batch)

        def accumulate(carry, micro):
            (_, sums), grads = grad_fn(state.params, micro)
            return jax.tree.map(jnp.add, carry, (sums, grads)), None

        zero_sums = {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct_sum", "count")}
        zero_grads = jax.tree.map(jnp.zeros_like, state.params)
        (sums, grads), _ = jax.lax.scan(accumulate, (zero_sums, zero_grads), micro_ABT)
    grads = _psum(grads, axis_name)
    sums = _psum(sums, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**loss_lib.means(sums), "grad_norm": global_norm(grads),
               "lr": jnp.asarray(schedule(state.step), jnp.float32), "tokens": count}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: dict, *, model: nn.Module, compute_dtype: str = "float32") -> dict:
    """masked_sums of one batch; add them over batches and call loss.means for the averages."""
    logits_BTV = model.apply({"params": _cast(params, jnp.dtype(compute_dtype))},
                             *_model_inputs(batch))
    return loss_lib.masked_sums(logits_BTV, batch["targets"])


def jit_train_step(config, *, model, tx, schedule, state_shardings, batch_sharding):
    """train_step jitted over a mesh; the state is donated (updated in place)."""
    step = functools.partial(train_step, model=model, tx=tx, schedule=schedule,
                             grad_accum_steps=config.grad_accum_steps,
                             compute_dtype=config.compute_dtype)
    replicated = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
    return jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)


def pmap_train_step(config, *, model, tx, schedule, axis_name: str = "data"):
    """train_step under jax.pmap: state replicated, batch [devices, B / devices, T]."""
    step = functools.partial(train_step, model=model, tx=tx, schedule=schedule,
                             grad_accum_steps=config.grad_accum_steps,
                             compute_dtype=config.compute_dtype, axis_name=axis_name)
    return jax.pmap(step, axis_name=axis_name, donate_argnums=0)
