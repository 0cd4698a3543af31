"""The modular-arithmetic tables and their train/test split."""

import numpy as np
import pytest

from deltajax.data import IGNORE_INDEX
from deltajax.data.modular import modular_split, modular_table, vocab_size


@pytest.mark.parametrize("operation", ["+", "-", "x^2+y^2"])
def test_table_covers_every_pair_exactly_once(operation):
    a, b, c = modular_table(11, operation)
    assert len(set(zip(a.tolist(), b.tolist(), strict=True))) == len(a) == 121
    assert c.min() >= 0 and c.max() < 11


def test_answers_of_each_operation():
    p = 13
    for operation, expected in (("+", lambda a, b: (a + b) % p), ("-", lambda a, b: (a - b) % p),
                                ("x^2+y^2", lambda a, b: (a * a + b * b) % p)):
        a, b, c = modular_table(p, operation)
        np.testing.assert_array_equal(c, expected(a, b))


def test_division_labels_invert_multiplication():
    p = 17
    a, b, c = modular_table(p, "/")
    assert len(a) == p * (p - 1) and b.min() == 1        # b = 0 has no inverse
    np.testing.assert_array_equal((b * c) % p, a)


def test_split_is_disjoint_complete_and_sized():
    p = 23
    train, test = modular_split(p, "+", 0.3, seed=1)
    pairs = lambda s: {tuple(row[:2]) for row in s.inputs_NT.tolist()}
    assert not pairs(train) & pairs(test)
    assert len(pairs(train) | pairs(test)) == p * p
    assert len(train) == round(0.3 * p * p) and len(test) == p * p - len(train)
    again, _ = modular_split(p, "+", 0.3, seed=1)
    other, _ = modular_split(p, "+", 0.3, seed=2)
    np.testing.assert_array_equal(train.inputs_NT, again.inputs_NT)
    assert pairs(other) != pairs(train)


def test_items_put_the_loss_on_the_answer_only():
    train, _ = modular_split(7, "-", 0.5)
    item = train[3]
    a, b, eq = item["inputs"].tolist()
    assert eq == 7 and vocab_size(7) == 8
    assert item["targets"].tolist() == [IGNORE_INDEX, IGNORE_INDEX, (a - b) % 7]
    assert item["inputs"].dtype == np.int32 and item["targets"].dtype == np.int32
    with pytest.raises(IndexError):
        train[len(train)]


@pytest.mark.parametrize("kwargs, name", [
    (dict(p=15, operation="/", train_fraction=0.3), "p must be prime"),
    (dict(p=1, operation="+", train_fraction=0.3), "p must be an integer"),
    (dict(p=7, operation="*", train_fraction=0.3), "operation must be one of"),
    (dict(p=7, operation="+", train_fraction=0.0), "train_fraction"),
    (dict(p=7, operation="+", train_fraction=1.0), "train_fraction"),
    (dict(p=7, operation="+", train_fraction=0.001), "train_fraction"),
])
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        modular_split(**kwargs)


@pytest.mark.parametrize("p, train_fraction, share", [(53, 0.5, 0.490), (53, 0.3, 0.299)])
def test_share_of_test_pairs_whose_mirror_is_in_train(p, train_fraction, share):
    # The README's commutativity level of the grokking runs (split seed 0, as the presets).
    train, test = modular_split(p, "+", train_fraction, seed=0)
    seen = {(int(a), int(b)) for a, b, _ in train.arrays()["inputs"]}
    mirrored = [(int(b), int(a)) in seen for a, b, _ in test.arrays()["inputs"]]
    assert round(float(np.mean(mirrored)), 3) == share
