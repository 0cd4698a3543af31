"""Packed sequences through LanguageModel: each segment's logits equal those of the segment run
alone, for every mixer (attention masked, RoPE restarted, convolutions and states reset) and
through scan_layers; the steps pass a batch's segment_ids; grain's packer makes
such rows. The gradients through the segment masks are
the ops' (tests/ops: delta_rule and linear attention with segments, against float64)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.data import IGNORE_INDEX, pack_examples
from deltajax.models import LanguageModel, ModelConfig
from deltajax.train import loss as loss_lib
from deltajax.train import step
from tests.models.test_language_model import EVERY, TOKENS, VOCAB, forward, model_and_params
from tests.numerics import relative_error

# test_language_model's token shape, so that the unpacked calls reuse its compiled forward.
B, T = TOKENS.shape
# Row 0: segments of 4, 1 and 6 tokens; row 1: 5 and 6 (starts inside a chunk of 8).
LENGTHS = ([4, 1, 6], [5, 6])
# A gated DeltaNet with beta in [0, 2] whose layers run as one nn.scan.
SCANNED = ModelConfig(vocab_size=VOCAB, d_model=16, num_heads=2, num_layers=2,
                      mixer="gated_deltanet", scan_layers=True,
                      delta_rule=dict(chunk_size=8, allow_neg_eigval=True))


def packed_batch(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, size=(B, T))
    segment_ids = np.stack([np.repeat(3 * np.arange(len(lengths)) + 2, lengths)
                            for lengths in LENGTHS])
    return tokens, segment_ids


def alone_batch(tokens):
    """Each segment at the start of its own row, filler tokens after it (causality leaves the
    segment's logits those of the segment alone), and last the first packed row unsegmented;
    rows in batches of B."""
    rows = [(b, start, length) for b, lengths in enumerate(LENGTHS)
            for start, length in zip(np.cumsum([0, *lengths[:-1]]), lengths, strict=True)]
    alone_tokens = np.full((-(-(len(rows) + 1) // B) * B, T), 1)
    for r, (b, start, length) in enumerate(rows):
        alone_tokens[r, :length] = tokens[b, start:start + length]
    alone_tokens[len(rows)] = tokens[0]
    return rows, alone_tokens.reshape(-1, B, T)


@functools.cache
def scanned():
    """SCANNED's model, parameters and jitted forward."""
    model = LanguageModel(SCANNED)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, T), jnp.int32))["params"]
    return model, params, jax.jit(model.apply)


@pytest.mark.parametrize("which", ["every_mixer", "scan_layers"])
def test_packed_segments_compute_what_each_computes_alone(which):
    if which == "every_mixer":  # test_language_model's model and its compiled forward
        (_, params), apply = model_and_params(EVERY), forward(EVERY)
    else:
        _, params, apply = scanned()
    tokens, segment_ids = packed_batch()
    logits = apply({"params": params}, tokens, segment_ids)
    rows, alone_tokens = alone_batch(tokens)
    logits_alone = np.concatenate([apply({"params": params}, batch) for batch in alone_tokens])

    for r, (b, start, length) in enumerate(rows):
        assert relative_error(logits[b, start:start + length], logits_alone[r, :length]) < 1e-5
    # Without the ids the segments see each other: the comparison can tell the difference.
    assert relative_error(logits_alone[len(rows), 4:], logits[0, 4:]) > 1e-3


def test_bad_segment_ids_raise_naming_them():
    tokens, segment_ids = packed_batch()
    model, params, _ = scanned()
    with pytest.raises(ValueError, match="segment_ids_BT must be non-decreasing"):
        model.apply({"params": params}, tokens, segment_ids[:, ::-1])
    with pytest.raises(ValueError, match=r"segment_ids_BT must have shape \[batch, time\]"):
        model.apply({"params": params}, tokens, segment_ids[:, :-1])


def test_pack_examples_rows_keep_each_example_and_mask_the_padding():
    rng = np.random.default_rng(0)
    examples = [{"inputs": rng.integers(0, VOCAB, n), "targets": rng.integers(0, VOCAB, n)}
                for n in (5, 3, 7, 2, 6, 1)]
    rows = pack_examples(examples, 8, num_packing_bins=2)
    found = []
    for row in rows:
        ids = row["segment_ids"]
        assert np.all(np.diff(ids) >= 0) and all(x.shape == (8,) for x in row.values())
        for segment in np.unique(ids):
            where = ids == segment
            if np.all(row["targets"][where] == IGNORE_INDEX):   # padding
                assert where[-1] and segment == ids.max()
                continue
            found.append((tuple(row["inputs"][where]), tuple(row["targets"][where])))
    expected = [(tuple(e["inputs"]), tuple(e["targets"])) for e in examples]
    assert sorted(found) == sorted(expected)
    with pytest.raises(ValueError, match=r"examples\[0\] has 9 tokens"):
        pack_examples([{"inputs": np.zeros(9), "targets": np.zeros(9)}], 8)


def test_eval_step_passes_the_segment_ids_to_the_model():
    # train_step reads the batch through the same step._model_inputs.
    model, params, apply = scanned()
    tokens, segment_ids = packed_batch()
    targets = np.roll(tokens, -1, axis=1)
    packed = dict(inputs=tokens, targets=targets, segment_ids=segment_ids)
    sums = jax.jit(functools.partial(step.eval_step, model=model))(params, packed)
    expected = loss_lib.masked_sums(apply({"params": params}, tokens, segment_ids), targets)
    without_ids = loss_lib.masked_sums(apply({"params": params}, tokens), targets)
    # The same f32 forward and sum in two programs: only XLA's fusion and summation order
    # differ, a few ulps of a sum of 22 token losses.
    np.testing.assert_allclose(sums["loss_sum"], expected["loss_sum"], rtol=1e-6)
    assert abs(float(without_ids["loss_sum"]) - float(sums["loss_sum"])) > 1e-3
