"""Any random-access source -> a grain pipeline of per-host batches, resumable and deterministic.

Order of operations: shuffle (seeded, a new permutation each epoch) -> repeat -> this host's
slice [process_index::process_count] -> batch -> prefetch threads. Batch s is a pure function
of (source, seed, s), and the iterator's state (one index) is checkpointed with the model.
config.data.in_memory swaps in deltajax.data.in_memory, which yields the same batches.
"""

from collections.abc import Sequence
from typing import Optional

import grain

from deltajax.data.hosts import check_batching, host_slice
from deltajax.data.in_memory import InMemoryIterator


def make_dataset(source: Sequence, *, seed: int, global_batch_size: int, shuffle: bool = True,
                 num_epochs: Optional[int] = None, process_index: Optional[int] = None,
                 process_count: Optional[int] = None) -> grain.MapDataset:
    """A MapDataset whose element s is this host's rows of global batch s (dict of [B_host, ...]).

    num_epochs None repeats forever; process_index/count default to JAX's."""
    process_index, process_count = host_slice(process_index, process_count)
    check_batching(len(source), global_batch_size, process_count)
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
    """The train iterator of a (merged) trainer config: its seed, global batch and data fields.

    config.data.in_memory picks InMemoryIterator, else make_iterator(make_dataset(...)); both
    yield the same batches and checkpoint the same state."""
    d = config.data
    kwargs = dict(seed=config.seed, global_batch_size=config.global_batch_size,
                  shuffle=d.shuffle, num_epochs=d.num_epochs)
    if d.in_memory:
        return InMemoryIterator(source, **kwargs)
    return make_iterator(make_dataset(source, **kwargs), prefetch_threads=d.prefetch_threads,
                         prefetch_buffer=d.prefetch_buffer)
