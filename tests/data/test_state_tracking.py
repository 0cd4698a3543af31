"""The state-tracking sources: group tables (built and checked), running labels of parity,
modular arithmetic and word problems, determinism, and bad settings."""

import itertools

import numpy as np
import pytest

from deltajax.data import IGNORE_INDEX, ModularArithmeticSource, ParitySource, WordProblemSource
from deltajax.data.state_tracking import (
    check_group,
    make_group,
    make_source,
    modular_prefix_values,
)


@pytest.mark.parametrize("name, order", [("Z2", 2), ("Z5", 5), ("S3", 6), ("S4", 24),
                                         ("A5", 60), ("S5", 120)])
def test_group_tables_have_the_group_order_and_pass_the_axioms(name, order):
    group = make_group(name)  # make_group checks the table itself; check again to be explicit
    assert group.order == order and group.table.shape == (order, order)
    check_group(group.table)
    rows_are_permutations = np.all(np.sort(group.table, axis=1) == np.arange(order))
    assert rows_are_permutations  # a Latin square: every product a * b is unique in a row


def test_permutation_tables_compose_the_permutations_left_to_right():
    group = make_group("S4")
    for a, b in itertools.product(range(24), repeat=2):
        p, q = group.perms[a], group.perms[b]
        assert group.perms[group.table[a, b]] == tuple(q[p[x]] for x in range(4))
    assert group.perms[0] == (0, 1, 2, 3)
    # S3 is not abelian, A5 holds the even permutations only.
    s3 = make_group("S3").table
    assert not np.array_equal(s3, s3.T)
    a5 = make_group("A5")
    assert all(sum(p[i] > p[j] for i in range(5) for j in range(i + 1, 5)) % 2 == 0
               for p in a5.perms)


def test_check_group_rejects_tables_that_break_an_axiom():
    z3 = make_group("Z3").table
    with pytest.raises(ValueError, match="identity"):
        check_group(np.roll(z3, 1, axis=1))
    with pytest.raises(ValueError, match="closed"):
        check_group(np.where(z3 == 2, 3, z3))
    # a - b mod 3 has no identity on both sides; (x + y + xy) mod 4 breaks inverses.
    with pytest.raises(ValueError, match="identity"):
        check_group((np.arange(3)[:, None] - np.arange(3)[None, :]) % 3)
    x = np.arange(4)
    with pytest.raises(ValueError, match="inverse"):
        check_group((x[:, None] + x[None, :] + x[:, None] * x[None, :]) % 4)
    not_associative = np.array([[0, 1, 2], [1, 0, 0], [2, 0, 0]])
    with pytest.raises(ValueError, match="associative"):
        check_group(not_associative)
    with pytest.raises(ValueError, match="square"):
        check_group(np.zeros((2, 3), int))


def test_parity_targets_are_the_running_parity():
    source = ParitySource(num_examples=8, seq_len=50, seed=1)
    for example in (source[i] for i in range(8)):
        bits = example["inputs"]
        assert set(bits.tolist()) <= {0, 1} and example["inputs"].dtype == np.int32
        expected = [sum(bits[:t + 1]) % 2 for t in range(50)]
        assert example["targets"].tolist() == expected


def test_word_problem_targets_are_the_running_products():
    source = WordProblemSource(num_examples=4, seq_len=30, group="S3", seed=2)
    group = make_group("S3")
    for example in (source[i] for i in range(4)):
        state = tuple(range(3))
        for g, target in zip(example["inputs"], example["targets"], strict=True):
            state = tuple(group.perms[g][x] for x in state)  # state then g: apply g after
            assert group.perms[target] == state
    assert source.vocab_size == 6


@pytest.mark.parametrize("moved, count", [(2, 1 + 10), (3, 1 + 10 + 20)])
def test_restricted_inputs_move_few_points_and_the_targets_cover_the_group(moved, count):
    # Grazzi et al.'s S5 "only swaps" (identity and the 10 transpositions) and "swaps, 3-perm."
    # (and the 20 3-cycles): the inputs are those elements only, the labels any element.
    source = make_source("S5", num_examples=64, seq_len=40, seed=0, max_moved_points=moved)
    group = make_group("S5")
    inputs = np.concatenate([source[i]["inputs"] for i in range(64)])
    targets = np.concatenate([source[i]["targets"] for i in range(64)])
    moved_by = {g: sum(p[x] != x for x in range(5)) for g, p in enumerate(group.perms)}
    assert len(set(inputs.tolist())) == count and max(moved_by[g] for g in inputs) == moved
    assert len(set(targets.tolist())) == 120 and source.vocab_size == 120
    example = source[3]
    np.testing.assert_array_equal(example["targets"],
                                  group.running_products(example["inputs"]))
    # 0 (every element) draws exactly the unrestricted words.
    every = make_source("S5", num_examples=4, seq_len=9, seed=1, max_moved_points=0)[2]
    np.testing.assert_array_equal(every["inputs"], make_source(
        "S5", num_examples=4, seq_len=9, seed=1)[2]["inputs"])


def test_cyclic_word_problem_is_a_running_sum():
    example = WordProblemSource(num_examples=2, seq_len=40, group="Z5", seed=0)[1]
    np.testing.assert_array_equal(example["targets"], np.cumsum(example["inputs"]) % 5)


def test_modular_arithmetic_labels_numbers_with_the_usual_precedence():
    # 3 + 4 * 2 - 1 * 3 (mod 5): prefixes 3, 3+4=7, 3+8=11, 11-1=10, 3+8-3=8.
    tokens = np.array([3, 5, 4, 7, 2, 6, 1, 7, 3])  # + = 5, - = 6, * = 7
    values = modular_prefix_values(tokens, 5)
    assert values[0::2].tolist() == [3 % 5, 7 % 5, 11 % 5, 10 % 5, 8 % 5]
    assert np.all(values[1::2] == IGNORE_INDEX)
    source = ModularArithmeticSource(num_examples=16, seq_len=21, seed=0)
    for example in (source[i] for i in range(16)):
        expression = "".join(str(t) if i % 2 == 0 else "+-*"[t - 5]
                             for i, t in enumerate(example["inputs"]))
        assert example["targets"][-1] == eval(expression) % 5  # Python's precedence
        assert np.all(example["inputs"][1::2] >= 5) and np.all(example["inputs"][0::2] < 5)
    assert source.vocab_size == 8


@pytest.mark.parametrize("task", ["parity", "modular_arithmetic", "S3"])
def test_examples_depend_only_on_seed_and_index(task):
    make = lambda seed: make_source(task, num_examples=8, seq_len=17, seed=seed)
    np.testing.assert_array_equal(make(3)[5]["inputs"], make(3)[5]["inputs"])
    assert not np.array_equal(make(3)[5]["inputs"], make(4)[5]["inputs"])
    assert not np.array_equal(make(3)[5]["inputs"], make(3)[6]["inputs"])
    with pytest.raises(IndexError):
        make(3)[8]


@pytest.mark.parametrize("call, match", [
    (lambda: make_group("Q8"), "group must be"),
    (lambda: make_group("S7"), "n must be in"),
    (lambda: make_group("Z1"), "m >= 2"),
    (lambda: make_source("dyck", num_examples=1, seq_len=4), "task must be"),
    (lambda: ParitySource(num_examples=0, seq_len=4), "ParitySource.num_examples"),
    (lambda: WordProblemSource(num_examples=2, seq_len=-1), "WordProblemSource.seq_len"),
    (lambda: ModularArithmeticSource(num_examples=2, seq_len=5, modulus=1),
     "ModularArithmeticSource.modulus"),
    (lambda: WordProblemSource(2, 4, "S5", max_moved_points=1), "max_moved_points must be"),
    (lambda: WordProblemSource(2, 4, "Z5", max_moved_points=2), "needs a permutation group"),
    (lambda: WordProblemSource(2, 4, "A5", max_moved_points=2), "but the identity"),
])
def test_bad_settings_are_rejected_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
