"""Modular arithmetic tables (the grokking tasks): every pair (a, b) of Z_p and c = a op b mod p.

Example = the tokens "a b =" with the loss on the answer only: inputs [a, b, p], targets
[-100, -100, c] (token p is "="; vocabulary p + 1, as in Nanda et al. 2023). The table is split
once, by a seeded permutation, into a train and a test part that are disjoint and together hold
every pair exactly once.
"""

import dataclasses
from collections.abc import Callable

import numpy as np

from deltajax.data.synthetic import IGNORE_INDEX

SEQ_LEN = 3  # a, b, "="


def _divide(a, b, p):
    # b^(p-2) = b^-1 mod p (Fermat); pairs with b = 0 are left out of the table.
    return (a * np.asarray([pow(int(x), p - 2, p) for x in b], np.int64)) % p


OPERATIONS: dict[str, Callable] = {
    "+": lambda a, b, p: (a + b) % p,
    "-": lambda a, b, p: (a - b) % p,
    "/": _divide,
    "x^2+y^2": lambda a, b, p: (a * a + b * b) % p,
    "x^3+xy": lambda a, b, p: (a * a * a + a * b) % p,
}


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))


def modular_table(p: int, operation: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a_N, b_N, c_N) int64 over every pair of the operation's domain, a-major order.

    Division needs a prime p (every b != 0 invertible) and leaves b = 0 out: N = p (p - 1);
    the other operations have N = p^2."""
    if not isinstance(p, (int, np.integer)) or isinstance(p, bool) or p < 2:
        raise ValueError(f"p must be an integer >= 2, got {p!r}")
    if operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {sorted(OPERATIONS)}, got {operation!r}")
    if operation == "/" and not is_prime(int(p)):
        raise ValueError(f"p must be prime for operation '/' (every b != 0 invertible), got {p}")
    a_N, b_N = (x.ravel().astype(np.int64) for x in np.meshgrid(np.arange(p), np.arange(p),
                                                                indexing="ij"))
    if operation == "/":
        a_N, b_N = a_N[b_N != 0], b_N[b_N != 0]
    return a_N, b_N, OPERATIONS[operation](a_N, b_N, int(p)).astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class ModularSource:
    """A random-access grain source over rows of a modular table: inputs_NT, targets_NT int32
    [N, 3]; item i is {"inputs": [a, b, p], "targets": [-100, -100, c]}."""

    inputs_NT: np.ndarray
    targets_NT: np.ndarray

    def __len__(self) -> int:
        return len(self.inputs_NT)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"ModularSource index {index} out of range [0, {len(self)})")
        return {"inputs": self.inputs_NT[index], "targets": self.targets_NT[index]}

    @property
    def num_examples(self) -> int:
        return len(self.inputs_NT)

    def arrays(self) -> dict:
        """Every row as one batch: {"inputs", "targets"} int32 [N, 3]."""
        return {"inputs": self.inputs_NT, "targets": self.targets_NT}


def modular_split(p: int, operation: str, train_fraction: float,
                  seed: int = 0) -> tuple[ModularSource, ModularSource]:
    """(train, test) sources: a seeded permutation of the whole table, the first
    round(train_fraction * N) rows for training and the rest for test."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
    a_N, b_N, c_N = modular_table(p, operation)
    n = len(a_N)
    n_train = int(round(train_fraction * n))
    if not 0 < n_train < n:
        raise ValueError(f"train_fraction={train_fraction} leaves an empty train or test set "
                         f"of the {n} pairs")
    order_N = np.random.default_rng(seed).permutation(n)
    inputs_NT = np.stack([a_N, b_N, np.full(n, p)], axis=1).astype(np.int32)[order_N]
    targets_NT = np.full((n, SEQ_LEN), IGNORE_INDEX, np.int32)
    targets_NT[:, -1] = c_N[order_N]
    return (ModularSource(inputs_NT[:n_train], targets_NT[:n_train]),
            ModularSource(inputs_NT[n_train:], targets_NT[n_train:]))


def vocab_size(p: int) -> int:
    """Tokens 0..p-1 for the residues and p for "="."""
    return p + 1
