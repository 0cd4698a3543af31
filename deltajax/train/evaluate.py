"""Evaluation: masked loss and accuracy summed over the first batches of a source, in order."""

from collections.abc import Sequence
from typing import Optional

import jax
from jax.sharding import Mesh

from deltajax.data import make_dataset
from deltajax.train import sharding
from deltajax.train.loss import means


def evaluate(config, eval_fn, params, source: Sequence, mesh: Optional[Mesh]) -> dict:
    """{"eval/loss", "eval/accuracy"} over min(config.eval.num_batches, all) global batches of
    source, unshuffled. eval_fn(params, batch) -> loss.masked_sums; mesh None: unsharded."""
    dataset = make_dataset(source, seed=config.seed, global_batch_size=config.global_batch_size,
                           shuffle=False, num_epochs=1)
    totals = None
    for index in range(min(config.eval.num_batches, len(dataset))):
        batch = dataset[index]
        if mesh is not None:
            batch = sharding.shard_batch(batch, mesh)
        sums = eval_fn(params, batch)
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    result = jax.device_get(means(totals))
    return {f"eval/{k}": float(v) for k, v in result.items()}
