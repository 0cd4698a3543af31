"""The MQAR generator: Zoology's layout, the power-law gaps, determinism and bad settings."""

import numpy as np
import pytest

from deltajax.data import IGNORE_INDEX, MQARSource, make_dataset

SOURCE = MQARSource(num_examples=64, seq_len=128, num_kv_pairs=8, vocab_size=512, seed=3)


def test_pairs_open_the_sequence_with_keys_and_values_from_their_halves_of_the_vocab():
    for example in (SOURCE[i] for i in range(16)):
        keys, values = example["inputs"][0:16:2], example["inputs"][1:16:2]
        assert len(set(keys.tolist())) == 8 and len(set(values.tolist())) == 8
        assert np.all((keys >= 1) & (keys < 256)) and np.all((values >= 256) & (values < 512))
        assert np.all(example["targets"][:16] == IGNORE_INDEX)


def test_every_key_is_queried_once_and_its_target_is_its_value():
    for example in (SOURCE[i] for i in range(16)):
        inputs, targets = example["inputs"], example["targets"]
        value_of = dict(zip(inputs[0:16:2].tolist(), inputs[1:16:2].tolist(), strict=True))
        query_positions = np.flatnonzero(targets != IGNORE_INDEX)
        assert sorted(inputs[query_positions].tolist()) == sorted(value_of)
        assert all(targets[t] == value_of[inputs[t]] for t in query_positions)
        assert np.all(query_positions >= 16) and np.all(query_positions % 2 == 0)
        filler = np.setdiff1d(np.arange(16, 128), query_positions)
        assert np.all(inputs[filler] == 0)


def test_query_gaps_follow_the_power_law_that_favours_short_gaps():
    source = MQARSource(num_examples=2000, seq_len=64, num_kv_pairs=1, vocab_size=128, seed=0)
    slots = np.array([(np.flatnonzero(source[i]["targets"] != IGNORE_INDEX)[0] - 2) // 2
                      for i in range(len(source))])
    counts = np.bincount(slots, minlength=31) / len(slots)
    expected = source.gap_probabilities
    np.testing.assert_allclose(expected.sum(), 1.0)
    assert 3.9 < expected[0] / expected[3] < 4.0  # p(g) ~ g^(a - 1), a = 0.01: 4^0.99 = 3.95
    # Binomial standard error of each frequency is below 0.011 at 2000 draws.
    np.testing.assert_allclose(counts[:4], expected[:4], atol=0.04)


def test_examples_depend_only_on_seed_and_index():
    again = MQARSource(num_examples=64, seq_len=128, num_kv_pairs=8, vocab_size=512, seed=3)
    other_seed = MQARSource(num_examples=64, seq_len=128, num_kv_pairs=8, vocab_size=512, seed=4)
    np.testing.assert_array_equal(SOURCE[5]["inputs"], again[5]["inputs"])
    assert not np.array_equal(SOURCE[5]["inputs"], other_seed[5]["inputs"])
    assert not np.array_equal(SOURCE[5]["inputs"], SOURCE[6]["inputs"])
    assert SOURCE[0]["inputs"].dtype == np.int32 and SOURCE[0]["targets"].dtype == np.int32


def test_source_batches_through_the_grain_pipeline():
    batch = make_dataset(SOURCE, seed=0, global_batch_size=8)[0]
    assert batch["inputs"].shape == (8, 128) and batch["targets"].shape == (8, 128)
    assert np.sum(batch["targets"] != IGNORE_INDEX) == 8 * 8


@pytest.mark.parametrize("kwargs, field", [
    (dict(seq_len=64, num_kv_pairs=17), "4 \\* num_kv_pairs <= seq_len"),
    (dict(seq_len=128, num_kv_pairs=8, vocab_size=128), "vocab_size=128 must exceed"),
    (dict(seq_len=64, num_kv_pairs=0), "num_kv_pairs"),
    (dict(seq_len=64, num_kv_pairs=4, power_a=0.0), "power_a"),
    (dict(seq_len=64, num_kv_pairs=4, vocab_size=16.5), "vocab_size"),
])
def test_bad_settings_are_rejected_naming_the_argument(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MQARSource(num_examples=4, **{"vocab_size": 512, **kwargs})


def test_index_out_of_range_raises():
    with pytest.raises(IndexError):
        SOURCE[64]
