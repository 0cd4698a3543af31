"""In-context modular arithmetic as grain sources (He et al. 2024, "Learning to grok: emergence of
in-context learning and skill composition in modular arithmetic tasks").

A task is a vector (a, b) in Z_p^2, the function z = (a x + b y) mod p. A sequence holds n_ctx
examples of one task, each the tokens `x y z` with no separator (vocabulary Z_p, as the authors'
code writes them by default), and the loss is on the z tokens only: inputs are
x_1 y_1 z_1 ... x_n y_n (3 n_ctx - 1 tokens) and the target z_k sits at y_k's position
(Z_POSITIONS), so one sequence scores every shot k = 1..n_ctx.

Two splits, both from a seed:
  task_split  num_ood_tasks held-out tasks drawn first, then num_tasks pre-training tasks from
              the rest: the held-out set is the same for every num_tasks of one seed, so a sweep
              over num_tasks scores every run on the same out-of-distribution tasks, and larger
              pre-training sets contain the smaller ones.
  pair_split  the p^2 inputs (x, y): a train_fraction for the pre-training sequences, the rest
              for the evaluation sequences (the authors' alpha, "data_pct").
"""

import dataclasses

import numpy as np

from deltajax.data.modular import is_prime
from deltajax.data.synthetic import IGNORE_INDEX


def _check_int(value, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def check_p(p) -> None:
    """p must be a prime (the paper's setting: Z_p is a field, every a != 0 invertible)."""
    _check_int(p, "p", 2)
    if not is_prime(int(p)):
        raise ValueError(f"p must be a prime, got {p}")


def z_positions(n_ctx: int) -> np.ndarray:
    """The input positions whose target is z_1..z_n: y_k's position 3k - 2 (0-based, k >= 1)."""
    return 3 * np.arange(n_ctx) + 1


def task_split(p: int, num_tasks: int, num_ood_tasks: int, seed: int = 0, *,
               parallelogram: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(pretrain_N2, ood_M2): disjoint int64 arrays of tasks (a, b), N = num_tasks,
    M = num_ood_tasks.

    parallelogram: the pre-training tasks come in fours (a, b), (a, y), (x, b), (x, y) with
    x != a and y != b, so each is a sum and difference of the other three (the authors'
    construction, which they train with; num_tasks must then be a multiple of 4)."""
    check_p(p)
    _check_int(num_ood_tasks, "num_ood_tasks", 1)
    _check_int(num_tasks, "num_tasks", 1)
    if num_tasks + num_ood_tasks > p * p:
        raise ValueError(f"num_tasks={num_tasks} must be at most p^2 - num_ood_tasks = "
                         f"{p * p - num_ood_tasks} (p={p})")
    if parallelogram and num_tasks % 4:
        raise ValueError(f"num_tasks={num_tasks} must be a multiple of 4 with parallelogram=True")
    rng = np.random.default_rng((seed, 0))
    order = rng.permutation(p * p)
    ood, rest = order[:num_ood_tasks], order[num_ood_tasks:]
    if not parallelogram:
        chosen = rest[:num_tasks]
    else:
        chosen = _parallelograms(p, num_tasks, set(ood.tolist()), rest, rng)
    as_pairs = lambda flat: np.stack(np.divmod(np.asarray(flat, np.int64), p), axis=1)  # noqa: E731
    return as_pairs(chosen), as_pairs(ood)


def _parallelograms(p: int, num_tasks: int, held_out: set, candidates: np.ndarray,
                    rng: np.random.Generator) -> list:
    """Greedy over the candidates in order: each one not yet taken is a base (a, b) and takes
    the first corner (x, y), in a seeded order of all p^2, whose three tasks are neither taken
    nor held out; a base that no corner completes is skipped."""
    taken, chosen = set(), []
    for base in candidates.tolist():
        if len(chosen) == num_tasks:
            break
        if base in taken:
            continue
        a, b = divmod(base, p)
        for corner in rng.permutation(p * p).tolist():
            x, y = divmod(corner, p)
            four = {base, a * p + y, x * p + b, x * p + y}
            if x != a and y != b and not four & (taken | held_out):
                taken |= four
                chosen += [base, a * p + y, x * p + b, x * p + y]
                break
    if len(chosen) < num_tasks:
        raise ValueError(f"num_tasks={num_tasks}: only {len(chosen)} parallelogram tasks fit "
                         f"beside num_ood_tasks={len(held_out)} at p={p}; ask for fewer")
    return chosen


def pair_split(p: int, train_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train_P2, test_Q2): the p^2 inputs (x, y) split by a seeded permutation, P =
    round(train_fraction p^2), disjoint and together every pair once."""
    check_p(p)
    if (isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float))
            or not 0 < train_fraction < 1):
        raise ValueError(f"train_fraction must be in (0, 1) (evaluation needs held-out inputs), "
                         f"got {train_fraction!r}")
    order = np.random.default_rng((seed, 1)).permutation(p * p)
    num_train = round(train_fraction * p * p)
    if not 0 < num_train < p * p:
        raise ValueError(f"train_fraction={train_fraction} leaves an empty side at p={p}")
    as_pairs = lambda flat: np.stack(np.divmod(flat.astype(np.int64), p), axis=1)  # noqa: E731
    return as_pairs(order[:num_train]), as_pairs(order[num_train:])


@dataclasses.dataclass(frozen=True, eq=False)
class ICLModularSource:
    """Example i: {"inputs", "targets": int32 [3 n_ctx - 1]}, a pure function of (seed, i).

    Its task is tasks[i % len(tasks)] (every task equally often over len(tasks) consecutive
    examples), its n_ctx inputs drawn without replacement from `pairs`."""

    p: int
    tasks: np.ndarray          # [N, 2] int (a, b)
    pairs: np.ndarray          # [P, 2] int (x, y)
    n_ctx: int
    num_examples: int
    seed: int = 0

    def __post_init__(self):
        check_p(self.p)
        _check_int(self.n_ctx, "n_ctx", 1)
        _check_int(self.num_examples, "num_examples", 1)
        for name in ("tasks", "pairs"):
            array = np.asarray(getattr(self, name))
            if array.ndim != 2 or array.shape[1] != 2 or len(array) == 0:
                raise ValueError(f"{name} must be a non-empty [N, 2] array, got shape "
                                 f"{array.shape}")
            if array.min() < 0 or array.max() >= self.p:
                raise ValueError(f"{name} must hold elements of Z_p = [0, {self.p})")
            object.__setattr__(self, name, array.astype(np.int64))
        if self.n_ctx > len(self.pairs):
            raise ValueError(f"n_ctx={self.n_ctx} must be at most the {len(self.pairs)} inputs "
                             "(x, y) of pairs (a sequence repeats none)")

    @property
    def vocab_size(self) -> int:
        return self.p

    @property
    def seq_len(self) -> int:
        return 3 * self.n_ctx - 1

    def __len__(self) -> int:
        return self.num_examples

    def task_of(self, index: int) -> np.ndarray:
        return self.tasks[index % len(self.tasks)]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"ICLModularSource index {index} out of range "
                             f"[0, {self.num_examples})")
        rng = np.random.default_rng((self.seed, int(index)))
        a, b = self.task_of(index)
        x, y = self.pairs[rng.choice(len(self.pairs), self.n_ctx, replace=False)].T
        tokens = np.stack([x, y, (a * x + b * y) % self.p], axis=1).reshape(-1)
        targets = np.full(self.seq_len, IGNORE_INDEX, np.int32)
        targets[z_positions(self.n_ctx)] = tokens[3 * np.arange(self.n_ctx) + 2]
        return {"inputs": tokens[:-1].astype(np.int32), "targets": targets}
