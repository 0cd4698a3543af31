"""A small source held whole in host memory and batched by one gather per step: the batches,
order and checkpoint state of pipeline.make_dataset, without grain's per-example work.

make_dataset's batch s (shuffle(seed) -> repeat(num_epochs) -> [process_index::process_count] ->
batch) passes each of its B / process_count examples through grain one at a time: 81 ms for the
3,831 examples of a full-batch grokking step on a busy 2-core CPU, 0.4 ms here, where the source
is stacked once and batch s is one fancy index into it. The positions are the same arithmetic, and
each epoch's permutation is grain's own (a shuffled grain.MapDataset.range, read once per epoch:
~15 us per example, paid by the epoch's first batch), so the rows match grain's row for row.
The state is grain's too ({"next_index": batches returned}): grain.checkpoint.CheckpointSave and
CheckpointRestore save and restore it, and a checkpoint written by either path restores into the
other.
"""

from collections.abc import Sequence
from typing import Any, Optional

import grain
import jax
import numpy as np

from deltajax.data.hosts import check_batching, host_slice


class InMemoryIterator(grain.DatasetIterator):
    """Iterates this host's rows of global batches 0, 1, ... (dict of [B_host, ...] arrays, as
    make_iterator(make_dataset(...)) with the same arguments); num_epochs None repeats forever."""

    def __init__(self, source: Sequence, *, seed: int, global_batch_size: int,
                 shuffle: bool = True, num_epochs: Optional[int] = None,
                 process_index: Optional[int] = None, process_count: Optional[int] = None):
        super().__init__()
        self._index, self._count = host_slice(process_index, process_count)
        check_batching(len(source), global_batch_size, self._count)
        if num_epochs is not None and num_epochs < 1:
            raise ValueError(f"num_epochs must be None (repeat forever) or >= 1, got {num_epochs}")
        self._num_examples = len(source)
        self._host_batch = global_batch_size // self._count
        # Stacked as grain's batch stacks: one np.stack per leaf, so dtypes and shapes match.
        self._rows = jax.tree.map(lambda *xs: np.stack(xs),
                                  *(source[i] for i in range(self._num_examples)))
        self._order = grain.MapDataset.range(self._num_examples).shuffle(seed=seed) \
            if shuffle else None
        self._permutations: dict[int, np.ndarray] = {}
        # The length of the batched grain dataset: a stream of E * N examples (or sys.maxsize
        # when repeated forever), this host's every count-th one, in whole batches.
        stream = len(grain.MapDataset.range(self._num_examples).repeat(num_epochs))
        self._length = len(range(self._index, stream, self._count)) // self._host_batch
        self._next = 0

    def __next__(self) -> Any:
        if self._next >= self._length:
            raise StopIteration
        batch = self.batch(self._next)
        self._next += 1
        return batch

    def batch(self, step: int) -> Any:
        """This host's rows of global batch `step` (does not move the iterator)."""
        stream_t = self._index + self._count * (step * self._host_batch +
                                                np.arange(self._host_batch, dtype=np.int64))
        epoch_t, position_t = np.divmod(stream_t, self._num_examples)
        if self._order is None:
            rows_t = position_t
        else:
            rows_t = np.empty_like(position_t)
            for epoch in np.unique(epoch_t):  # a batch spans at most a few epochs
                here = epoch_t == epoch
                rows_t[here] = self._permutation(int(epoch))[position_t[here]]
        return jax.tree.map(lambda rows: rows[rows_t], self._rows)

    def _permutation(self, epoch: int) -> np.ndarray:
        """grain's order of the source in `epoch` (its shuffle reseeds every epoch); the last two
        are kept, as a batch may straddle two epochs."""
        if epoch not in self._permutations:
            n = self._num_examples
            self._permutations = {e: p for e, p in self._permutations.items() if e == epoch - 1}
            self._permutations[epoch] = np.fromiter(
                (self._order[epoch * n + i] for i in range(n)), np.int64, count=n)
        return self._permutations[epoch]

    def get_state(self) -> dict:
        return {"next_index": self._next}

    def set_state(self, state: dict) -> None:
        index = state["next_index"]
        if not 0 <= index <= self._length:  # as grain's iterator checks it
            raise IndexError(f"Checkpoint `next_index` {index} is out of range for dataset of "
                             f"length {self._length}.")
        self._next = index
