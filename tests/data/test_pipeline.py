"""grain pipeline: deterministic given (seed, step), exact resume, per-host shards, copy task."""

import numpy as np
import pytest

from deltajax.data import IGNORE_INDEX, CopySource, make_dataset, make_iterator

SOURCE = CopySource(num_examples=40, seq_len=9, vocab_size=11, seed=3)


def _rows(batch):
    return [tuple(row) for row in batch["inputs"]]


def test_copy_source_repeats_the_prompt_and_masks_it_from_the_loss():
    example = SOURCE[7]
    n = (SOURCE.seq_len + 1) // 2
    tokens = np.concatenate([example["inputs"], example["targets"][-1:]])
    assert example["inputs"].dtype == np.int32 and example["inputs"].shape == (9,)
    np.testing.assert_array_equal(tokens[n + 1:], tokens[:len(tokens) - n - 1])
    assert tokens[n] == 0 and np.all(tokens[:n] > 0)
    assert np.all(example["targets"][:n] == IGNORE_INDEX)
    np.testing.assert_array_equal(example["targets"][n:], tokens[n + 1:])


def test_copy_source_is_a_function_of_seed_and_index():
    np.testing.assert_array_equal(SOURCE[5]["inputs"], CopySource(40, 9, 11, seed=3)[5]["inputs"])
    assert not np.array_equal(SOURCE[5]["inputs"], CopySource(40, 9, 11, seed=4)[5]["inputs"])


def test_batch_at_a_step_depends_only_on_seed_and_step():
    first = make_dataset(SOURCE, seed=1, global_batch_size=4, process_index=0, process_count=1)
    again = make_dataset(SOURCE, seed=1, global_batch_size=4, process_index=0, process_count=1)
    other = make_dataset(SOURCE, seed=2, global_batch_size=4, process_index=0, process_count=1)
    iterated = make_iterator(first)
    for step in range(13):  # past one epoch of 10 batches
        batch = next(iterated)
        np.testing.assert_array_equal(batch["inputs"], again[step]["inputs"])
        assert batch["inputs"].shape == (4, 9)
    assert _rows(first[0]) != _rows(other[0])


def test_each_epoch_is_a_new_permutation_of_every_example():
    ds = make_dataset(SOURCE, seed=0, global_batch_size=4, process_index=0, process_count=1)
    epoch0 = sum((_rows(ds[s]) for s in range(10)), [])
    epoch1 = sum((_rows(ds[s]) for s in range(10, 20)), [])
    everything = sorted(tuple(SOURCE[i]["inputs"]) for i in range(40))
    assert sorted(epoch0) == everything and sorted(epoch1) == everything
    assert epoch0 != epoch1


def test_iterator_restored_from_its_state_continues_exactly():
    ds = make_dataset(SOURCE, seed=0, global_batch_size=4, process_index=0, process_count=1)
    iterator = make_iterator(ds)
    for _ in range(6):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator)["inputs"] for _ in range(3)]
    resumed = make_iterator(ds)
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(resumed)["inputs"], want)


def test_hosts_read_disjoint_halves_of_each_global_batch():
    whole = make_dataset(SOURCE, seed=0, global_batch_size=8, process_index=0, process_count=1)
    hosts = [make_dataset(SOURCE, seed=0, global_batch_size=8, process_index=i, process_count=2)
             for i in range(2)]
    for step in range(3):
        parts = [_rows(h[step]) for h in hosts]
        assert len(parts[0]) == len(parts[1]) == 4
        assert not set(parts[0]) & set(parts[1])
        assert sorted(parts[0] + parts[1]) == sorted(_rows(whole[step]))


def test_a_global_batch_not_divisible_by_the_hosts_is_rejected():
    with pytest.raises(ValueError, match="global_batch_size=5"):
        make_dataset(SOURCE, seed=0, global_batch_size=5, process_index=0, process_count=2)


def test_bad_copy_source_arguments_name_the_field():
    with pytest.raises(ValueError, match="CopySource.seq_len"):
        CopySource(num_examples=4, seq_len=1, vocab_size=5)
    with pytest.raises(ValueError, match="CopySource.vocab_size"):
        CopySource(num_examples=4, seq_len=4, vocab_size=1)
