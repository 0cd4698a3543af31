"""The in-memory path yields grain's batches, in grain's order, and checkpoints grain's state."""

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from deltajax.data import (
    CopySource,
    InMemoryIterator,
    iterator_from_config,
    make_dataset,
    make_iterator,
)
from deltajax.train import merge_with_defaults

# 40 examples in batches of 6: batches straddle epochs, and an epoch leaves a remainder.
SOURCE = CopySource(num_examples=40, seq_len=9, vocab_size=11, seed=3)


def _pair(**kwargs):
    kwargs = dict(seed=5, global_batch_size=6, **kwargs)
    return InMemoryIterator(SOURCE, **kwargs), make_iterator(make_dataset(SOURCE, **kwargs))


def _assert_same_batch(got, want):
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape
        np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_equal_grains_in_order_across_epochs(shuffle):
    memory, grained = _pair(shuffle=shuffle, process_index=0, process_count=1)
    for _ in range(25):  # 150 examples: almost 4 epochs, each reshuffled
        _assert_same_batch(next(memory), next(grained))


@pytest.mark.parametrize("host", [0, 1, 2])
def test_each_hosts_slice_equals_grains(host):
    memory, grained = _pair(shuffle=True, process_index=host, process_count=3)
    for _ in range(20):
        _assert_same_batch(next(memory), next(grained))


def test_a_finite_number_of_epochs_ends_where_grains_does():
    memory, grained = _pair(shuffle=True, num_epochs=2, process_index=1, process_count=2)
    got, want = list(memory), list(grained)
    assert len(got) == len(want) == 13  # 40 rows per host over 2 epochs, 3 per batch
    for a, b in zip(got, want, strict=True):
        _assert_same_batch(a, b)


def test_state_is_grains_and_restores_across_the_two_paths():
    memory, grained = _pair(shuffle=True, process_index=0, process_count=1)
    for _ in range(8):
        next(memory), next(grained)
    assert memory.get_state() == grained.get_state() == {"next_index": 8}
    fresh_memory, fresh_grain = _pair(shuffle=True, process_index=0, process_count=1)
    fresh_memory.set_state(grained.get_state())  # a grain checkpoint read by the in-memory path
    fresh_grain.set_state(memory.get_state())    # and the other way
    for _ in range(5):
        want = next(grained)
        _assert_same_batch(next(memory), want)
        _assert_same_batch(next(fresh_memory), want)
        _assert_same_batch(next(fresh_grain), want)


def test_orbax_round_trip_of_the_iterator_resumes_exactly(tmp_path):
    iterator = InMemoryIterator(SOURCE, seed=1, global_batch_size=8, process_index=0,
                                process_count=1)
    for _ in range(7):
        next(iterator)
    # As deltajax.train.checkpoint saves the data iterator beside the state.
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    with ocp.CheckpointManager(str(tmp_path), item_names=("data",), options=options) as manager:
        manager.save(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
        expected = [next(iterator) for _ in range(4)]
        resumed = InMemoryIterator(SOURCE, seed=1, global_batch_size=8, process_index=0,
                                   process_count=1)
        manager.restore(7, args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointRestore(resumed)))
    assert resumed.get_state() == {"next_index": 7}
    for want in expected:
        _assert_same_batch(next(resumed), want)


def test_a_state_out_of_range_is_refused_as_grain_refuses_it():
    memory, grained = _pair(num_epochs=1, process_index=0, process_count=1)
    for iterator in (memory, grained):
        with pytest.raises(IndexError, match="out of range"):
            iterator.set_state({"next_index": 7})  # 6 batches in one epoch


def test_iterator_from_config_picks_the_path_and_both_agree():
    config = merge_with_defaults({"seed": 2, "global_batch_size": 4,
                                  "data": {"in_memory": True, "num_epochs": 3}})
    memory = iterator_from_config(SOURCE, config)
    config.data.in_memory = False
    grained = iterator_from_config(SOURCE, config)
    assert isinstance(memory, InMemoryIterator) and not isinstance(grained, InMemoryIterator)
    got, want = list(memory), list(grained)
    assert len(got) == len(want) == 30
    for a, b in zip(got, want, strict=True):
        _assert_same_batch(a, b)


def test_a_source_smaller_than_a_batch_is_refused_as_by_make_dataset():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        InMemoryIterator(SOURCE, seed=0, global_batch_size=48, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="global_batch_size=5"):
        InMemoryIterator(SOURCE, seed=0, global_batch_size=5, process_index=0, process_count=2)
