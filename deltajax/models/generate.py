"""Decoding (greedy or sampled with temperature, top-k and top-p; rows stop at EOS; ragged,
right-padded prompts, bucketed so that one compiled program serves many prompt lengths) and
parameter counting."""

import functools
from collections.abc import Mapping
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from deltajax.models.language_model import LanguageModel, check_tokens
from deltajax.ops import checks

# Fills the stop set (to a multiple of _EOS_SLOTS ids, so that sets of up to _EOS_SLOTS ids
# share one compiled program) and stands for none: neither a token nor the -1 of NaN logits.
_NO_EOS = -2
_EOS_SLOTS = 8


class Generation(NamedTuple):
    """What generate returns. tokens: [B, T + max_new_tokens] int32, row b's prompt and then its
    new tokens in tokens[b, :lengths[b]] and pad_id after (right-padded, as the prompt is).
    lengths: [B] int32, each row's prompt length plus its new tokens (an EOS included)."""

    tokens: jax.Array
    lengths: jax.Array


def sample_logits(logits_BV: jax.Array, key: jax.Array, *, temperature=1.0, top_k=None,
                  top_p=None) -> jax.Array:
    """[B] int32 token ids drawn from softmax(logits / temperature) restricted to the top_k
    largest logits, then to the smallest most-probable set whose probability reaches top_p (the
    nucleus). temperature 0 is argmax. Rows with a NaN logit give -1, outside every vocabulary.

    temperature, top_k and top_p may be traced: one compiled program serves every setting.
    """
    V = logits_BV.shape[-1]
    top_k = V if top_k is None else jnp.clip(top_k, 1, V)
    top_p = 1.0 if top_p is None else top_p

    def sampled(logits_BV):
        scaled_BV = logits_BV / temperature
        sorted_BV = -jnp.sort(-scaled_BV, axis=-1)   # descending
        in_top_k_1V = jnp.arange(V)[None, :] < top_k
        sorted_BV = jnp.where(in_top_k_1V, sorted_BV, -jnp.inf)
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
        # The most probable token is always kept (mass before it 0 < top_p); top_p >= 1 keeps
        # all top_k, whatever the rounding of the cumulative sum.
        kept_BV = (mass_before_BV < top_p) | (top_p >= 1.0)
        kept_B = jnp.maximum(jnp.sum(kept_BV & in_top_k_1V, axis=-1), 1)
        threshold_B1 = jnp.take_along_axis(sorted_BV, kept_B[:, None] - 1, axis=-1)
        return jax.random.categorical(
            key, jnp.where(scaled_BV >= threshold_B1, scaled_BV, -jnp.inf), axis=-1)

    greedy = lambda logits_BV: jnp.argmax(logits_BV, axis=-1)
    token_B = jax.lax.cond(temperature > 0, sampled, greedy, logits_BV)
    # NaN logits (traced bad input, see LanguageModel) would give token 0 or a random one, a
    # plausible token: -1 marks them instead (and keeps the later steps NaN).
    return jnp.where(jnp.any(jnp.isnan(logits_BV), axis=-1), -1, token_B).astype(jnp.int32)


def _choose_token(logits_BV, key, t, temperature, top_k, top_p):
    return sample_logits(logits_BV, jax.random.fold_in(key, t), temperature=temperature,
                         top_k=top_k, top_p=top_p)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "prefill"))
def _generate(model, params, prompt_BP, lengths_B, eos_E, pad_id, key, temperature, top_k,
              top_p, poisoned, *, max_new_tokens, prefill):
    """The cache holds P + max_new_tokens positions. The first `prefill` tokens (<= every row's
    length) go in one extend; from there one decode_step per position: a row feeds its own
    prompt token while it has one and its chosen token after, so rows of any length share one
    position counter (and every mixer's cache) without padding inside a sequence. The loop
    stops when every row has hit EOS or has max_new_tokens new tokens."""
    B, P = prompt_BP.shape
    S = P + max_new_tokens
    apply = lambda method, tokens, cache: model.apply({"params": params}, tokens, cache,
                                                      method=method)
    cache = model.init_cache(B, S)
    if prefill:
        logits_BTV, cache = apply(model.extend, prompt_BP[:, :prefill], cache)
        logits_BV = logits_BTV[:, -1]
    else:  # position 0 is a prompt token in every row: these logits choose nothing
        logits_BV = jnp.zeros((B, model.config.vocab_size), jnp.float32)
    prompt_BS = jnp.pad(prompt_BP, [(0, 0), (0, max_new_tokens)])
    tokens_BS = jnp.where(jnp.arange(S)[None, :] < lengths_B[:, None], prompt_BS, pad_id)

    def choose(t, logits_BV, out):
        """The token at position t of each row, from the logits at t - 1, and `out` after it."""
        tokens_BS, new_lengths_B, done_B = out
        logits_BV = jnp.where(poisoned, jnp.nan, logits_BV)
        chosen_B = _choose_token(logits_BV, key, t, temperature, top_k, top_p)
        in_prompt_B = t < lengths_B
        writes_B = ~in_prompt_B & ~done_B
        tokens_BS = tokens_BS.at[:, t].set(jnp.where(writes_B, chosen_B, tokens_BS[:, t]))
        new_lengths_B = jnp.where(writes_B, t + 1, new_lengths_B)
        done_B = done_B | (writes_B & (jnp.isin(chosen_B, eos_E)
                                       | (t + 1 - lengths_B >= max_new_tokens)))
        # A finished row keeps feeding its chosen tokens (in the vocabulary): rows are
        # independent, and its output is pad from here on.
        return jnp.where(in_prompt_B, prompt_BS[:, t], chosen_B), (tokens_BS, new_lengths_B,
                                                                  done_B)

    token_B, out = choose(prefill, logits_BV, (tokens_BS, lengths_B, jnp.zeros(B, bool)))

    def step(carry):
        t, token_B, cache, out = carry
        logits_BV, cache = apply(model.decode_step, token_B, cache)
        token_B, out = choose(t + 1, logits_BV, out)
        return t + 1, token_B, cache, out

    def running(carry):
        t, _, _, (_, _, done_B) = carry
        return (t + 1 < S) & ~jnp.all(done_B)

    _, _, _, (tokens_BS, lengths_B, _) = jax.lax.while_loop(
        running, step, (jnp.int32(prefill), token_B, cache, out))
    return tokens_BS, lengths_B


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _number(value, name: str, low: float, high: float, low_open: bool) -> jax.Array:
    """A real scalar in (low or [low) .. high]; a traced one is checked by its dtype only."""
    if isinstance(value, jax.Array):
        real = value.ndim == 0 and (jnp.issubdtype(value.dtype, jnp.floating)
                                    or jnp.issubdtype(value.dtype, jnp.integer))
    else:
        real = (isinstance(value, (int, float, np.integer, np.floating))
                and not isinstance(value, bool))
    if not real:
        raise ValueError(f"{name} must be a real number, got {value!r}")
    concrete = checks.concrete(value)
    if concrete is not None:
        x = float(concrete)
        if not (np.isfinite(x) and (x > low if low_open else x >= low) and x <= high):
            interval = f"{'(' if low_open else '['}{low}, {high}]"
            raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return jnp.asarray(value, jnp.float32)


def _prompt_lengths(prompt_lengths, B: int, T: int):
    """(lengths [B] int32, the traced 'invalid' flag or None) of prompt_lengths. Concrete lengths
    stay NumPy (even under jit), so that generate can choose the prefill length from them."""
    if prompt_lengths is None:
        return np.full((B,), T, np.int32), None
    values = checks.concrete(prompt_lengths)
    array = prompt_lengths if values is None else values
    if jnp.shape(array) != (B,) or not jnp.issubdtype(array.dtype, jnp.integer):
        raise ValueError(f"prompt_lengths must be [batch] = [{B}] integers, got shape "
                         f"{jnp.shape(array)} of {array.dtype}")
    if values is None:
        invalid = jnp.any((prompt_lengths < 1) | (prompt_lengths > T))
        return jnp.clip(prompt_lengths, 1, T).astype(jnp.int32), invalid
    if values.min() < 1 or values.max() > T:
        bad = values.min() if values.min() < 1 else values.max()
        raise ValueError(f"prompt_lengths holds {int(bad)}: each row's prompt length must lie in "
                         f"[1, {T}], the width of prompt_BT")
    return values.astype(np.int32), None


def _eos_ids(eos_id, vocab_size: int) -> jax.Array:
    """[E] int32 stop ids from a token id or a sequence of them, filled with _NO_EOS."""
    if eos_id is None:
        return jnp.full((_EOS_SLOTS,), _NO_EOS, jnp.int32)
    expected = (f"eos_id must be a token id in [0, {vocab_size}) or a non-empty sequence of "
                f"them, got {eos_id!r}")
    values = checks.concrete(eos_id)
    if values is None:   # traced: checked by its shape and dtype only
        if jnp.ndim(eos_id) > 1 or not jnp.issubdtype(eos_id.dtype, jnp.integer):
            raise ValueError(expected)
        return jnp.atleast_1d(eos_id).astype(jnp.int32)
    if (isinstance(eos_id, bool) or values.ndim > 1 or values.size == 0
            or not np.issubdtype(values.dtype, np.integer) or values.min() < 0
            or values.max() >= vocab_size):
        raise ValueError(expected)
    values = np.atleast_1d(values)
    return jnp.asarray(np.pad(values, (0, -len(values) % _EOS_SLOTS), constant_values=_NO_EOS),
                       jnp.int32)


def _key(key):
    """A typed PRNG key from a typed one or a raw uint32[2] jax.random.PRNGKey."""
    if isinstance(key, np.ndarray):
        key = jnp.asarray(key)
    if isinstance(key, jax.Array):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 0:
            return key
        if key.shape == (2,) and key.dtype == jnp.uint32:
            return jax.random.wrap_key_data(key)
    raise ValueError(f"key must be a PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)),"
                     f" got {key!r}")


def generate(model: LanguageModel, params, prompt_BT: jax.Array, max_new_tokens: int, *,
             prompt_lengths=None, key: Optional[jax.Array] = None, temperature=None,
             top_k: Optional[int] = None, top_p=None, eos_id=None, pad_id: int = 0,
             bucket: int = 64) -> Generation:
    """Continues each prompt by up to max_new_tokens tokens, greedily or by sampling.

    prompt_BT: [batch, time >= 1] integer token ids in [0, vocab_size), right-padded: row b's
      prompt is prompt_BT[b, :prompt_lengths[b]] (prompt_lengths: [batch] integers in
      [1, time]; None: every row is `time` long); what follows it is ignored.
    max_new_tokens: a positive integer (Python or NumPy).
    key: a PRNG key. None decodes greedily; with a key, tokens are drawn from softmax(logits /
      temperature) (temperature: default 1, 0 is greedy) restricted to the top_k most probable
      (a positive integer) and then to the smallest set whose probability reaches top_p (in
      (0, 1]). The draw at position t uses fold_in(key, t).
    eos_id: a token id or a sequence of them; a row that generates one stops there (the EOS is
      kept) and the rest of its row is pad_id (an integer).
    bucket: the prompt is padded to a multiple of `bucket` positions, and the shortest row's
      length rounded down to a multiple of `bucket` is prefilled in one pass; the positions after
      it go one decode step at a time (a row's remaining prompt tokens, then its new ones). So
      prompts whose widths and shortest rows round to the same multiples share one compiled
      program (for a given model, batch and max_new_tokens), at the price of fewer than
      `bucket` prompt positions fed one at a time beyond each row's extra length.
    Returns Generation(tokens [B, time + max_new_tokens] int32, lengths [B] int32). Under jit
    with a prompt outside the vocabulary or bad prompt_lengths, the new tokens are -1 (the
    logits are NaN).
    """
    if not isinstance(model, LanguageModel):
        raise ValueError(f"model must be a deltajax.models.LanguageModel, got "
                         f"{type(model).__name__}")
    if isinstance(params, Mapping) and set(params) == {"params"}:
        raise ValueError("params must be the parameter tree, variables['params'], not the "
                         "variables dict {'params': ...} that model.init returns")
    max_new_tokens = _positive_int(max_new_tokens, "max_new_tokens")
    bucket = _positive_int(bucket, "bucket")
    if not isinstance(prompt_BT, jax.Array):   # lists and NumPy arrays
        prompt_BT = np.asarray(prompt_BT)
    if jnp.ndim(prompt_BT) != 2 or jnp.shape(prompt_BT)[1] < 1:
        raise ValueError(f"prompt_BT must have shape [batch, time >= 1], got "
                         f"{jnp.shape(prompt_BT)}")
    B, T = jnp.shape(prompt_BT)
    lengths_B, bad_lengths = _prompt_lengths(prompt_lengths, B, T)
    vocab_size = model.config.vocab_size
    if not jnp.issubdtype(jnp.result_type(prompt_BT), jnp.integer):   # before jnp.where casts it
        check_tokens(prompt_BT, vocab_size, "prompt_BT")
    # Only the prompts are checked (and fed): the padding after them may hold anything. NumPy
    # when concrete: jnp ops would compile for each prompt width, which bucketing avoids.
    values = checks.concrete(prompt_BT)
    xp, prompt_BT = (np, values) if values is not None and isinstance(lengths_B, np.ndarray) \
        else (jnp, prompt_BT)
    prompt_BT = xp.where(np.arange(T)[None, :] < lengths_B[:, None], prompt_BT, 0)
    bad_tokens = check_tokens(prompt_BT, vocab_size, "prompt_BT")   # before int32 could wrap
    prompt_BT = prompt_BT.astype(np.int32)
    eos_E = _eos_ids(eos_id, vocab_size)
    if isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer)) \
            or not -2 ** 31 <= pad_id < 2 ** 31:
        raise ValueError(f"pad_id must be an int32 integer, got {pad_id!r}")
    if key is None:
        if (temperature, top_k, top_p) != (None, None, None):
            raise ValueError("key: temperature, top_k and top_p sample, which needs a PRNG key "
                             "(key=jax.random.key(0)); without one generate is greedy")
        key, temperature = jax.random.key(0), 0.0   # greedy: the key is never used
    key = _key(key)
    temperature = _number(1.0 if temperature is None else temperature, "temperature", 0.0,
                          np.inf, False)
    top_k = vocab_size if top_k is None else _positive_int(top_k, "top_k")
    top_p = _number(1.0 if top_p is None else top_p, "top_p", 0.0, 1.0, True)

    P = -(-T // bucket) * bucket
    prompt_BP = xp.pad(prompt_BT, [(0, 0), (0, P - T)])
    # Traced lengths: every position one by one.
    prefill = int(lengths_B.min()) // bucket * bucket if isinstance(lengths_B, np.ndarray) else 0
    invalid = checks.any_invalid([bad_lengths, bad_tokens])
    tokens_BS, lengths_B = _generate(
        model, params, prompt_BP, lengths_B, eos_E,
        jnp.int32(pad_id), key, temperature, jnp.int32(min(top_k, vocab_size)), top_p,
        jnp.bool_(False) if invalid is None else invalid,
        max_new_tokens=max_new_tokens, prefill=prefill)
    return Generation(tokens_BS[:, :T + max_new_tokens], lengths_B)


def count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
