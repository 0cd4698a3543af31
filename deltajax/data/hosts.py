"""Each host's share of a global batch: the checks and defaults the grain and in-memory paths
share, so both accept and refuse the same arguments."""

from typing import Optional

import jax


def host_slice(process_index: Optional[int], process_count: Optional[int]) -> tuple[int, int]:
    """(process_index, process_count), JAX's where None."""
    return (jax.process_index() if process_index is None else process_index,
            jax.process_count() if process_count is None else process_count)


def check_batching(num_examples: int, global_batch_size: int, process_count: int) -> None:
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                         f"the {process_count} processes")
    if num_examples < global_batch_size:
        raise ValueError(f"the source has {num_examples} examples, fewer than one global batch "
                         f"of global_batch_size={global_batch_size}")
