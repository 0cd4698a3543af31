"""A seeded copy task: random tokens, a separator, then the same tokens again.

A random-access source (len + __getitem__), so grain can shuffle, shard and resume it by index.
Loss is taken only on the copy: targets are IGNORE_INDEX (-100) before it.
"""

import dataclasses

import numpy as np

IGNORE_INDEX = -100


@dataclasses.dataclass(frozen=True)
class CopySource:
    """Example i: inputs int32 [seq_len], targets int32 [seq_len], the same for a given seed.

    Sequence: x_1..x_n SEP x_1..x_n (n = ceil(seq_len / 2), x drawn from 1..vocab_size-1,
    SEP = 0), truncated to seq_len + 1 tokens; inputs are tokens[:-1], targets tokens[1:] with
    the prompt positions masked."""

    num_examples: int
    seq_len: int
    vocab_size: int
    seed: int = 0

    def __post_init__(self):
        for name in ("num_examples", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"CopySource.{name} must be positive, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise ValueError(f"CopySource.seq_len must be at least 2, got {self.seq_len}")
        if self.vocab_size < 2:
            raise ValueError(f"CopySource.vocab_size must be at least 2, got {self.vocab_size}")

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"CopySource index {index} out of range [0, {self.num_examples})")
        rng = np.random.default_rng((self.seed, int(index)))
        n = (self.seq_len + 1) // 2
        prompt = rng.integers(1, self.vocab_size, size=n, dtype=np.int32)
        tokens = np.concatenate([prompt, [0], prompt]).astype(np.int32)[: self.seq_len + 1]
        targets = tokens[1:].copy()
        targets[: n] = IGNORE_INDEX  # the prompt and the separator are not predictable
        return {"inputs": tokens[:-1], "targets": targets}
