"""Any random-access source -> a grain pipeline of per-host batches, resumable and deterministic.

Order of operations: shuffle (seeded, a new permutation each epoch) -> repeat -> this host's
slice [process_index::process_count] -> batch -> prefetch threads. Batch s is a pure function
of (source, seed, s), and the iterator's state (one index) is checkpointed with the model.
"""

from collections.abc import Sequence
from typing import Optional

import grain
import jax


def make_dataset(source: Sequence, *, seed: int, global_batch_size: int, shuffle: bool = True,
                 num_epochs: Optional[int] = None, process_index: Optional[int] = None,
                 process_count: Optional[int] = None) -> grain.MapDataset:
    """A MapDataset whose element s is this host's rows of global batch s (dict of [B_host, ...]).

    num_epochs None repeats forever; process_index/count default to JAX's."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                         f"the {process_count} processes")
    if len(source) < global_batch_size:
        raise ValueError(f"the source has {len(source)} examples, fewer than one global batch "
                         f"of global_batch_size={global_batch_size}")
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    ds = ds[process_index::process_count]
    return ds.batch(global_batch_size // process_count, drop_remainder=True)


def make_iterator(dataset: grain.MapDataset, *, prefetch_threads: int = 2,
                  prefetch_buffer: int = 4) -> grain.DatasetIterator:
    """Batches read ahead by threads; get_state()/set_state() give exact resumption."""
    options = grain.ReadOptions(num_threads=prefetch_threads, prefetch_buffer_size=prefetch_buffer)
    return iter(dataset.to_iter_dataset(options))


def iterator_from_config(source: Sequence, config) -> grain.DatasetIterator:
    """make_iterator(make_dataset(...)) with the trainer config's seed, batch and data fields."""
    dataset = make_dataset(source, seed=config.seed, global_batch_size=config.global_batch_size,
                           shuffle=config.data.shuffle, num_epochs=config.data.num_epochs)
    return make_iterator(dataset, prefetch_threads=config.data.prefetch_threads,
                         prefetch_buffer=config.data.prefetch_buffer)
