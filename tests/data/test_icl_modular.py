"""In-context modular arithmetic sources: labels, the task and input splits, argument checks."""

import numpy as np
import pytest

from deltajax.data import IGNORE_INDEX
from deltajax.data.icl_modular import ICLModularSource, pair_split, task_split, z_positions


def _as_set(rows) -> set:
    return set(map(tuple, np.asarray(rows).tolist()))


@pytest.mark.parametrize("parallelogram", [False, True])
def test_every_z_is_a_x_plus_b_y_mod_p_of_its_task(parallelogram):
    p, n_ctx = 7, 5
    tasks, _ = task_split(p, 8, 4, seed=3, parallelogram=parallelogram)
    train_pairs, _ = pair_split(p, 0.8, seed=3)
    source = ICLModularSource(p, tasks, train_pairs, n_ctx, num_examples=20, seed=1)
    at = z_positions(n_ctx)
    for index in range(len(source)):
        example = source[index]
        inputs, targets = example["inputs"], example["targets"]
        assert inputs.shape == targets.shape == (3 * n_ctx - 1,)
        assert inputs.dtype == targets.dtype == np.int32
        a, b = source.task_of(index)
        x, y = inputs[0::3], inputs[1::3]
        np.testing.assert_array_equal(targets[at], (a * x + b * y) % p)
        np.testing.assert_array_equal(inputs[2::3], targets[at][:-1])  # z_k is the next input
        assert np.all(np.delete(targets, at) == IGNORE_INDEX)
        assert len(_as_set(np.stack([x, y], 1))) == n_ctx  # no input twice in a sequence
        assert _as_set(np.stack([x, y], 1)) <= _as_set(train_pairs)
    # Every task equally often over len(tasks) consecutive examples; the same seed, the same data.
    assert _as_set([source.task_of(i) for i in range(8)]) == _as_set(tasks)
    again = ICLModularSource(p, tasks, train_pairs, n_ctx, num_examples=20, seed=1)
    np.testing.assert_array_equal(source[7]["inputs"], again[7]["inputs"])
    other = ICLModularSource(p, tasks, train_pairs, n_ctx, num_examples=20, seed=2)
    assert any(not np.array_equal(source[i]["inputs"], other[i]["inputs"]) for i in range(4))


@pytest.mark.parametrize("parallelogram", [False, True])
def test_task_split_is_disjoint_seeded_and_nested(parallelogram):
    p = 11
    small, ood = task_split(p, 16, 21, seed=0, parallelogram=parallelogram)
    large, ood_large = task_split(p, 64, 21, seed=0, parallelogram=parallelogram)
    assert len(_as_set(small)) == 16 and len(_as_set(large)) == 64 and len(_as_set(ood)) == 21
    assert not _as_set(large) & _as_set(ood)
    assert large.min() >= 0 and large.max() < p
    np.testing.assert_array_equal(ood, ood_large)  # one held-out set for every num_tasks
    assert _as_set(small) <= _as_set(large)
    np.testing.assert_array_equal(small, task_split(p, 16, 21, seed=0,
                                                    parallelogram=parallelogram)[0])
    assert _as_set(task_split(p, 16, 21, seed=1, parallelogram=parallelogram)[1]) != _as_set(ood)


def test_parallelogram_tasks_come_in_fours_each_the_sum_of_two_minus_the_third():
    tasks, _ = task_split(29, 64, 256, seed=0, parallelogram=True)
    for base, left, right, corner in tasks.reshape(-1, 4, 2):
        np.testing.assert_array_equal(base + corner, left + right)
        assert left[0] == base[0] and right[1] == base[1]
        assert len(_as_set([base, left, right, corner])) == 4


def test_pair_split_is_disjoint_complete_and_seeded():
    train, test = pair_split(11, 0.8, seed=0)
    assert len(train) == 97 and len(test) == 24
    assert _as_set(train) | _as_set(test) == {(x, y) for x in range(11) for y in range(11)}
    assert not _as_set(train) & _as_set(test)
    np.testing.assert_array_equal(test, pair_split(11, 0.8, seed=0)[1])
    assert _as_set(pair_split(11, 0.8, seed=1)[1]) != _as_set(test)


@pytest.mark.parametrize("call, match", [
    (lambda: task_split(12, 4, 4), "p must be a prime"),
    (lambda: task_split(1, 1, 1), "p must be an integer >= 2"),
    (lambda: task_split(5, 22, 4), "num_tasks=22 must be at most"),
    (lambda: task_split(5, 0, 4), "num_tasks must be"),
    (lambda: task_split(5, 4, 0), "num_ood_tasks must be"),
    (lambda: task_split(5, 6, 4, parallelogram=True), "multiple of 4"),
    (lambda: task_split(5, 20, 5, parallelogram=True), "parallelogram tasks fit"),
    (lambda: pair_split(5, 1.0), "train_fraction"),
    (lambda: pair_split(5, 0.01), "train_fraction"),
    (lambda: ICLModularSource(5, [[1, 2]], [[0, 1], [1, 1]], 0, 4), "n_ctx must be"),
    (lambda: ICLModularSource(5, [[1, 2]], [[0, 1], [1, 1]], 3, 4), "n_ctx=3 must be at most"),
    (lambda: ICLModularSource(5, [[1, 5]], [[0, 1]], 1, 4), "tasks must hold"),
    (lambda: ICLModularSource(5, [[1, 2]], [[0, 1]], 1, 0), "num_examples must be"),
    (lambda: ICLModularSource(5, np.zeros((0, 2), int), [[0, 1]], 1, 4), "tasks must be"),
])
def test_bad_arguments_are_rejected_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_index_out_of_range_is_an_index_error():
    source = ICLModularSource(5, [[1, 2]], [[0, 1], [1, 1]], 2, num_examples=3)
    with pytest.raises(IndexError):
        source[3]
