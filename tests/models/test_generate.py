"""generate as users call it: ragged prompts, EOS per row, sampling with a key, and prompt
lengths bucketed so that decoding compiles once per bucket.

The model tests use test_language_model's EVERY model (every mixer, the sliding window's ring
buffer included) with its compiled forward, and generate's shapes of its greedy test (batch 2,
prompts under 64 tokens, 4 new tokens): one compiled program serves every test here."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.models import generate
from deltajax.models.generate import sample_logits
from tests.models import test_input_checks as tiny
from tests.models.test_language_model import EVERY, TOKENS, forward, model_and_params

generate_module = importlib.import_module("deltajax.models.generate")  # not the function
NEW = 4
WIDTH, LENGTHS = 6, np.array([6, 2])   # row 1 is right-padded


def greedy_by_forward(prompt_BT, lengths_B, new):
    """Each row continued greedily by argmax of the whole forward (no cache), over a zero-padded
    buffer of 11 tokens (the compiled shape of test_language_model's forward)."""
    model, params = model_and_params(EVERY)
    buffer = np.zeros((2, 11), np.int32)
    for b, length in enumerate(lengths_B):
        buffer[b, :length] = prompt_BT[b, :length]
    for i in range(new):
        logits = np.asarray(forward(EVERY)({"params": params}, jnp.asarray(buffer)))
        for b, length in enumerate(lengths_B):
            buffer[b, length + i] = np.argmax(logits[b, length + i - 1])
    return buffer


def ragged_prompt():
    prompt = np.asarray(TOKENS[:, :WIDTH]).copy()
    prompt[1, LENGTHS[1]:] = -1   # padding is neither checked nor fed
    return prompt


def test_ragged_prompts_continue_each_row_from_its_own_length():
    model, params = model_and_params(EVERY)
    out = generate(model, params, ragged_prompt(), NEW, prompt_lengths=LENGTHS, pad_id=-5)
    expected = greedy_by_forward(ragged_prompt(), LENGTHS, NEW)
    assert out.tokens.shape == (2, WIDTH + NEW) and out.tokens.dtype == jnp.int32
    np.testing.assert_array_equal(out.lengths, LENGTHS + NEW)
    np.testing.assert_array_equal(out.tokens[0], expected[0, :WIDTH + NEW])
    np.testing.assert_array_equal(out.tokens[1, :2 + NEW], expected[1, :2 + NEW])
    np.testing.assert_array_equal(out.tokens[1, 2 + NEW:], -5)


def test_a_row_that_generates_eos_stops_and_is_padded_after():
    model, params = model_and_params(EVERY)
    free = generate(model, params, ragged_prompt(), NEW, prompt_lengths=LENGTHS)

    def check(eos_id, stops):
        out = generate(model, params, ragged_prompt(), NEW, prompt_lengths=LENGTHS,
                       eos_id=eos_id, pad_id=-5)
        for b, length in enumerate(LENGTHS):
            new = list(np.asarray(free.tokens[b, length:length + NEW]))
            kept = min([new.index(s) + 1 for s in stops if s in new] + [NEW])  # EOS included
            assert out.lengths[b] == length + kept
            np.testing.assert_array_equal(out.tokens[b, :length + kept],
                                          free.tokens[b, :length + kept])
            np.testing.assert_array_equal(out.tokens[b, length + kept:], -5)
        return out.lengths

    eos = int(free.tokens[0, WIDTH + 1])   # row 0's second new token
    assert check(np.int32(eos), [eos])[0] <= WIDTH + 2
    # A stop set: either id ends a row; row 1's second new token stops it too.
    stops = [int(free.tokens[1, 3]), eos]
    assert np.all(check(stops, stops) < LENGTHS + NEW)


def test_sampling_is_reproducible_from_its_key_and_greedy_at_the_limits():
    model, params = model_and_params(EVERY)
    prompt = TOKENS[:, :3]
    greedy = generate(model, params, prompt, NEW).tokens
    sample = lambda key, **kw: generate(model, params, prompt, NEW, key=key, **kw).tokens
    hot = sample(jax.random.key(1), temperature=5.0)
    np.testing.assert_array_equal(hot, sample(jax.random.key(1), temperature=5.0))
    # The same key, typed or raw.
    np.testing.assert_array_equal(hot, sample(jax.random.PRNGKey(1), temperature=np.float32(5)))
    assert np.any(hot != sample(jax.random.key(2), temperature=5.0))
    assert np.any(hot[:, 3:] != greedy[:, 3:])
    for limit in (dict(top_k=1), dict(top_p=1e-6), dict(temperature=0.0)):
        np.testing.assert_array_equal(sample(jax.random.key(3), **limit), greedy)


PROBS = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
DRAWS = 20000


@pytest.mark.parametrize("setting,expected", [
    (dict(), PROBS),
    (dict(top_k=2), [4 / 7, 3 / 7, 0, 0, 0]),
    # The nucleus: the fewest most probable tokens whose mass reaches top_p (0.4+0.3+0.15).
    (dict(top_p=0.8), [0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0, 0]),
    (dict(top_k=4, top_p=0.95), np.r_[PROBS[:4], 0] / PROBS[:4].sum()),
    (dict(temperature=2.0), np.sqrt(PROBS) / np.sqrt(PROBS).sum()),
    (dict(temperature=0.0), [1, 0, 0, 0, 0]),
])
def test_sample_logits_draws_from_the_filtered_distribution(setting, expected):
    tokens = sampled(**setting)
    frequencies = np.bincount(tokens[:DRAWS], minlength=5) / DRAWS
    # Binomial standard error <= 0.0036 at 20000 draws: 0.015 is over 4 of them.
    np.testing.assert_allclose(frequencies, expected, atol=0.015)
    assert np.all(frequencies[np.asarray(expected) == 0] == 0)
    assert tokens[DRAWS] == -1   # a row with a NaN logit


def sampled(temperature=1.0, top_k=None, top_p=None):
    # One compiled program for every setting: they are traced arguments.
    return np.asarray(_sample(jnp.float32(temperature), jnp.int32(top_k or 5),
                              jnp.float32(top_p or 1.0)))


@jax.jit
def _sample(temperature, top_k, top_p):
    """DRAWS rows of log(PROBS) (plus a constant), then a row holding a NaN."""
    logits = jnp.log(jnp.asarray(PROBS, jnp.float32)) + 3.0
    logits_BV = jnp.concatenate([jnp.tile(logits, (DRAWS, 1)), logits.at[2].set(jnp.nan)[None]])
    return sample_logits(logits_BV, jax.random.key(0), temperature=temperature, top_k=top_k,
                         top_p=top_p)


def test_prompt_lengths_in_one_bucket_compile_once(monkeypatch):
    traces = []
    choose = generate_module._choose_token
    monkeypatch.setattr(generate_module, "_choose_token",
                        lambda *args: (traces.append(1), choose(*args))[1])
    prompt = jax.random.randint(jax.random.PRNGKey(5), (1, 7), 0, tiny.VOCAB)
    run = lambda width, **kw: generate(tiny.MODEL, tiny.params(), prompt[:, :width], 2, **kw)
    # Widths 5..8 pad to 8 and prefill 4 tokens in one pass (the rest one by one).
    out = run(7, bucket=4)
    assert traces, "the first call compiles"
    compiled = len(traces)
    run(5, bucket=4)
    run(6, bucket=4, prompt_lengths=np.array([5]))
    assert len(traces) == compiled
    # Prefilling 4 tokens and feeding 3 one by one continues the prompt as feeding all 7 one by
    # one does (bucket 64; the decode path is checked against the forward above).
    np.testing.assert_array_equal(out.tokens, run(7).tokens)
    assert out.tokens.shape == (1, 9)
