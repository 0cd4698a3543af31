"""State-tracking tasks as grain sources: parity, modular arithmetic without brackets, and group
word problems (Grazzi et al. 2025, "Unlocking State-Tracking in Linear RNNs Through Negative
Eigenvalues"; Siems et al. 2025, "DeltaProduct"; Merrill et al. 2024, "The Illusion of State").

Every example carries a label at every position where the running state is defined, so a model
trained on length T is scored at every prefix up to T, and the same source at a longer seq_len
measures length extrapolation position by position.

  parity                inputs bits {0, 1}; target t = (x_1 + ... + x_t) mod 2.
  modular arithmetic    inputs n_1 o_1 n_2 o_2 ... with numbers in Z_m (tokens 0..m-1) and
                        operators + - * (tokens m, m+1, m+2); target at each number = the value
                        mod m of the expression so far, * binding before + and - (the setting of
                        Deletang et al. 2023 that xLSTM and Grazzi et al. use, modulus 5 there);
                        no target on operators. Labels at every number rather than only at the
                        end (the papers' loss) are our choice: one sequence scores every length.
  word problem          inputs group elements g_1..g_T (token = the element's index); target t =
                        g_1 g_2 ... g_t, for Z_m, S_n and A_n (S3, S4, A5, S5 in the papers).
                        max_moved_points=k draws the inputs from the permutations that move at
                        most k points (Grazzi et al.'s Sec. 5.2: S5 with "only swaps", k = 2,
                        and with "swaps, 3-perm.", k = 3); the targets still cover the group.
"""

import dataclasses
import itertools
import re

import numpy as np

from deltajax.data.synthetic import IGNORE_INDEX

MODULAR_OPERATORS = ("+", "-", "*")   # tokens modulus + 0, 1, 2
_GROUP_NAME = re.compile(r"([ZSA])([1-9][0-9]*)")


@dataclasses.dataclass(frozen=True, eq=False)
class Group:
    """A finite group by its table: table[a, b] = a * b (indices 0..order-1); 0 is the identity.

    Permutation groups hold their elements (perms[i] is a tuple, (p * q)(x) = q[p[x]]: apply p,
    then q, so a word is applied left to right)."""

    name: str
    table: np.ndarray
    perms: tuple = ()

    @property
    def order(self) -> int:
        return len(self.table)

    def running_products(self, word: np.ndarray) -> np.ndarray:
        """[g_1, g_1 g_2, ..., g_1 ... g_T] for a word of element indices."""
        out = np.empty(len(word), np.int32)
        state = 0
        for t, g in enumerate(word):
            state = self.table[state, g]
            out[t] = state
        return out


def check_group(table: np.ndarray, name: str = "table") -> None:
    """Raises a ValueError unless table is a group's: closed, associative, with identity 0 and
    an inverse for every element."""
    table = np.asarray(table)
    n = len(table)
    if table.ndim != 2 or table.shape != (n, n) or n < 1:
        raise ValueError(f"{name} must be a square [order, order] array, got shape {table.shape}")
    if table.min() < 0 or table.max() >= n:
        raise ValueError(f"{name} is not closed: entries must lie in [0, {n})")
    elements = np.arange(n)
    if not (np.array_equal(table[0], elements) and np.array_equal(table[:, 0], elements)):
        raise ValueError(f"{name}: element 0 is not the identity")
    left = table[table, :]                      # [a, b, c] = (a b) c
    right = table[:, table]                     # [a, b, c] = a (b c)
    if not np.array_equal(left, right):
        a, b, c = np.argwhere(left != right)[0]
        raise ValueError(f"{name} is not associative: ({a} {b}) {c} != {a} ({b} {c})")
    inverse = np.argmax(table == 0, axis=1)
    if not (np.all(table[elements, inverse] == 0) and np.all(table[inverse, elements] == 0)):
        raise ValueError(f"{name}: some element has no two-sided inverse")


def _permutation_group(name: str, perms: list) -> Group:
    index = {p: i for i, p in enumerate(perms)}
    table = np.array([[index[tuple(q[x] for x in p)] for q in perms] for p in perms], np.int32)
    return Group(name, table, tuple(perms))


def _is_even(perm: tuple) -> bool:
    inversions = sum(perm[i] > perm[j] for i in range(len(perm)) for j in range(i + 1, len(perm)))
    return inversions % 2 == 0


def make_group(name: str) -> Group:
    """"Z<m>" (cyclic, m >= 2), "S<n>" (symmetric, 2 <= n <= 6) or "A<n>" (alternating,
    3 <= n <= 6), its table checked."""
    match = _GROUP_NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(f"group must be 'Z<m>', 'S<n>' or 'A<n>' (e.g. 'Z5', 'S3', 'A5'), "
                         f"got {name!r}")
    kind, n = match.group(1), int(match.group(2))
    if kind == "Z":
        if n < 2:
            raise ValueError(f"group {name!r}: a cyclic group needs m >= 2")
        elements = np.arange(n)
        group = Group(name, ((elements[:, None] + elements[None, :]) % n).astype(np.int32))
    else:
        low = 2 if kind == "S" else 3
        if not low <= n <= 6:  # S7 has 5040 elements: a 25M-entry table and as many tokens
            raise ValueError(f"group {name!r}: n must be in [{low}, 6]")
        perms = [p for p in itertools.permutations(range(n)) if kind == "S" or _is_even(p)]
        group = _permutation_group(name, perms)  # lexicographic: the identity comes first
    check_group(group.table, f"group {name!r}")
    return group


def _check_sizes(owner: str, num_examples, seq_len) -> None:
    for field, value in (("num_examples", num_examples), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{owner}.{field} must be a positive integer, got {value!r}")


def _rng(seed: int, index: int, num_examples: int, owner: str) -> np.random.Generator:
    if not 0 <= index < num_examples:
        raise IndexError(f"{owner} index {index} out of range [0, {num_examples})")
    return np.random.default_rng((seed, int(index)))


@dataclasses.dataclass(frozen=True)
class ParitySource:
    """Example i: {"inputs": bits, "targets": running parity}, int32 [seq_len], from (seed, i)."""

    num_examples: int
    seq_len: int
    seed: int = 0

    def __post_init__(self):
        _check_sizes("ParitySource", self.num_examples, self.seq_len)

    vocab_size = 2

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        rng = _rng(self.seed, index, self.num_examples, "ParitySource")
        bits = rng.integers(0, 2, self.seq_len).astype(np.int32)
        return {"inputs": bits, "targets": (np.cumsum(bits) % 2).astype(np.int32)}


def modular_prefix_values(tokens: np.ndarray, modulus: int) -> np.ndarray:
    """The value mod `modulus` of the expression up to each number token (even positions), with
    * before + and -; IGNORE_INDEX at operator positions."""
    out = np.full(len(tokens), IGNORE_INDEX, np.int32)
    total, term = 0, 0
    for t, token in enumerate(tokens):
        if t % 2:
            op = MODULAR_OPERATORS[token - modulus]
            continue
        if t == 0:
            term = int(token)
        elif op == "*":
            term = term * int(token)
        else:  # + or -: the finished product joins the sum, a new term starts
            total, term = total + term, int(token) if op == "+" else -int(token)
        out[t] = (total + term) % modulus
    return out


@dataclasses.dataclass(frozen=True)
class ModularArithmeticSource:
    """Example i: numbers and operators alternating, starting with a number, int32 [seq_len];
    targets = modular_prefix_values (uniform numbers and operators)."""

    num_examples: int
    seq_len: int
    modulus: int = 5
    seed: int = 0

    def __post_init__(self):
        _check_sizes("ModularArithmeticSource", self.num_examples, self.seq_len)
        if isinstance(self.modulus, bool) or not isinstance(self.modulus, (int, np.integer)) \
                or self.modulus < 2:
            raise ValueError(f"ModularArithmeticSource.modulus must be an integer >= 2, got "
                             f"{self.modulus!r}")

    @property
    def vocab_size(self) -> int:
        return self.modulus + len(MODULAR_OPERATORS)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        rng = _rng(self.seed, index, self.num_examples, "ModularArithmeticSource")
        tokens = rng.integers(0, self.modulus, self.seq_len)
        operators = self.modulus + rng.integers(0, len(MODULAR_OPERATORS), self.seq_len)
        tokens[1::2] = operators[1::2]
        tokens = tokens.astype(np.int32)
        return {"inputs": tokens, "targets": modular_prefix_values(tokens, self.modulus)}


@dataclasses.dataclass(frozen=True)
class WordProblemSource:
    """Example i: uniform elements of `group` ("Z5", "S3", "A5", ...) and their running products,
    int32 [seq_len] each. max_moved_points=k >= 2 (permutation groups): inputs uniform over the
    elements that move at most k points instead (tokens keep the group's indices)."""

    num_examples: int
    seq_len: int
    group: str = "S3"
    seed: int = 0
    max_moved_points: int = 0  # 0: every element

    def __post_init__(self):
        _check_sizes("WordProblemSource", self.num_examples, self.seq_len)
        group = make_group(self.group)
        object.__setattr__(self, "_group", group)
        object.__setattr__(self, "_inputs", input_elements(group, self.max_moved_points))

    @property
    def vocab_size(self) -> int:
        return self._group.order

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        rng = _rng(self.seed, index, self.num_examples, "WordProblemSource")
        word = self._inputs[rng.integers(0, len(self._inputs), self.seq_len)]
        return {"inputs": word, "targets": self._group.running_products(word)}


def input_elements(group: Group, max_moved_points) -> np.ndarray:
    """The element indices a word draws from, int32: all, or those moving at most k points."""
    k = max_moved_points
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0 or k == 1:
        raise ValueError("WordProblemSource.max_moved_points must be 0 (every element) or an "
                         f"integer >= 2, got {k!r}")
    if k == 0:
        return np.arange(group.order, dtype=np.int32)
    if not group.perms:
        raise ValueError(f"WordProblemSource.max_moved_points={k} needs a permutation group "
                         f"(S<n> or A<n>), got {group.name!r}")
    moved = [sum(p[x] != x for x in range(len(p))) for p in group.perms]
    elements = np.array([i for i, m in enumerate(moved) if m <= k], np.int32)
    if len(elements) == 1:  # A_n has no transposition
        raise ValueError(f"WordProblemSource.max_moved_points={k}: no element of "
                         f"{group.name!r} but the identity moves at most {k} points")
    return elements


def make_source(task: str, *, num_examples: int, seq_len: int, seed: int = 0, modulus: int = 5,
                max_moved_points: int = 0):
    """task "parity", "modular_arithmetic" (with modulus) or a group name ("S3", "Z5", "A5";
    with max_moved_points, see WordProblemSource)."""
    if task == "parity":
        return ParitySource(num_examples, seq_len, seed)
    if task == "modular_arithmetic":
        return ModularArithmeticSource(num_examples, seq_len, modulus, seed)
    if isinstance(task, str) and _GROUP_NAME.fullmatch(task):
        return WordProblemSource(num_examples, seq_len, task, seed, max_moved_points)
    raise ValueError(f"task must be 'parity', 'modular_arithmetic' or a group name such as "
                     f"'S3', 'Z5', 'A5'; got {task!r}")
