"""LanguageModel and generate at their boundaries: token ids outside the vocabulary, a KV cache
extended past its max_len, and generate's arguments. Concrete: a ValueError naming the argument;
traced: NaN logits, NaN cache and NaN gradients (generate: -1 tokens)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.models import LanguageModel, ModelConfig, generate

VOCAB, B, T = 8, 1, 3
# An attention layer (the only cache with a max_len) and a delta-rule layer (a state cache).
CONFIG = ModelConfig(vocab_size=VOCAB, d_model=8, num_layers=2, num_heads=2, mlp=None,
                     layer_mixers=("attention", "deltanet"), delta_rule=dict(backend="recurrent"))
MODEL = LanguageModel(CONFIG)
GOOD = jnp.array([[1, 2, 3]], jnp.int32)
BAD_TOKENS = {"vocab_size": VOCAB, "-1": -1}
KEY = jax.random.key(0)


@functools.cache
def params():
    return jax.jit(MODEL.init)(jax.random.PRNGKey(0), GOOD)["params"]


def with_token(tokens, token):
    return tokens.at[0, -1].set(token)


def apply(tokens, method=None, *args):
    return MODEL.apply({"params": params()}, tokens, *args, method=method)


def jitted_method(method):
    return jax.jit(lambda tokens, cache: apply(tokens, method, cache))


@pytest.mark.parametrize("bad", BAD_TOKENS)
def test_concrete_tokens_outside_the_vocabulary_raise_naming_tokens(bad):
    token = BAD_TOKENS[bad]
    message = rf"holds token id {token}, outside the vocabulary \[0, 8\) of config.vocab_size=8"
    with pytest.raises(ValueError, match="tokens_BT " + message):
        apply(with_token(GOOD, token))
    with pytest.raises(ValueError, match="tokens_BT " + message):
        apply(with_token(GOOD, token), MODEL.extend, MODEL.init_cache(B, T))
    with pytest.raises(ValueError, match="tokens_B " + message):
        apply(jnp.array([token]), MODEL.decode_step, MODEL.init_cache(B, T))


def test_token_dtype_and_rank_are_checked():
    with pytest.raises(ValueError, match=r"tokens_BT must hold integer token ids, got dtype float"):
        apply(GOOD.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"tokens_BT must have shape \[batch, time\], got \(3,\)"):
        apply(GOOD[0])
    with pytest.raises(ValueError, match=r"tokens_B must have shape \[batch\], got \(1, 3\)"):
        apply(GOOD, MODEL.decode_step, MODEL.init_cache(B, T))


@functools.cache
def jitted_forward():
    return jax.jit(apply)


@pytest.mark.parametrize("bad", BAD_TOKENS)
def test_traced_tokens_outside_the_vocabulary_give_nan_logits(bad):
    assert np.all(np.isfinite(jitted_forward()(GOOD)))
    assert np.all(np.isnan(jitted_forward()(with_token(GOOD, BAD_TOKENS[bad]))))


def test_traced_bad_token_in_extend_makes_the_cache_nan_so_later_steps_are_too():
    extend, decode = jitted_method(MODEL.extend), jitted_method(MODEL.decode_step)
    logits, cache = extend(with_token(GOOD, -1), MODEL.init_cache(B, T + 1))
    assert np.all(np.isnan(logits))
    floats = [x for x in jax.tree_util.tree_leaves(cache) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(np.all(np.isnan(x)) for x in floats)
    next_logits, _ = decode(jnp.array([1]), cache)   # a valid token after the bad one
    assert np.all(np.isnan(next_logits))


def test_traced_bad_tokens_give_nan_gradients_not_zeros():
    def loss(params, tokens):
        return jnp.sum(MODEL.apply({"params": params}, tokens))   # linear in the logits
    grad = jax.jit(jax.grad(loss))
    leaves = jax.tree_util.tree_leaves(grad(params(), GOOD))
    assert all(np.all(np.isfinite(g)) for g in leaves)
    leaves = jax.tree_util.tree_leaves(grad(params(), with_token(GOOD, VOCAB)))
    assert all(np.all(np.isnan(g)) for g in leaves)


def test_extending_the_kv_cache_past_max_len_raises_or_gives_nan():
    # Attention alone: the only cache with a max_len, and cheap to run eagerly.
    model = LanguageModel(ModelConfig(vocab_size=VOCAB, d_model=8, num_layers=1, num_heads=2,
                                      mlp=None, mixer="attention"))
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), GOOD)

    def apply(tokens, method, cache):
        return model.apply(variables, tokens, cache, method=method)
    def cache_at(pos):   # as after `pos` tokens (their keys do not matter here)
        return tuple(dict(layer, pos=jnp.int32(pos)) for layer in model.init_cache(B, T))
    with pytest.raises(ValueError, match=r"x_BTD's 4 tokens do not fit a KV cache of 3 positions"):
        apply(jnp.array([[1, 2, 3, 4]]), model.extend, cache_at(0))
    with pytest.raises(ValueError, match=r"start=2: .*2...3 do not fit a KV cache of 3 positions "
                                         r"\(give init_cache a max_len of at least 4\)"):
        apply(GOOD[:, :2], model.extend, cache_at(2))
    decode = jax.jit(lambda tokens, cache: apply(tokens, model.decode_step, cache))
    assert np.all(np.isfinite(decode(jnp.array([1]), cache_at(T - 1))[0]))
    logits, _ = decode(jnp.array([1]), cache_at(T))   # the cache is full
    assert np.all(np.isnan(logits))


def test_init_cache_checks_its_sizes_and_takes_numpy_integers():
    assert jax.tree_util.tree_structure(MODEL.init_cache(np.int64(B), np.int32(T))) == \
        jax.tree_util.tree_structure(MODEL.init_cache(B, T))
    for name, kwargs in (("batch", dict(batch=0, max_len=T)),
                         ("max_len", dict(batch=B, max_len=2.0)),
                         ("max_len", dict(batch=B, max_len=True))):
        with pytest.raises(ValueError, match=rf"{name} must be a positive integer"):
            MODEL.init_cache(**kwargs)


def test_generate_takes_numpy_integers():
    out = generate(MODEL, params(), GOOD, max_new_tokens=np.int64(2))
    assert out.tokens.shape == (B, T + 2)
    np.testing.assert_array_equal(out.tokens, generate(MODEL, params(), np.asarray(GOOD), 2).tokens)
    assert np.all((out.tokens >= 0) & (out.tokens < VOCAB))
    numpy = generate(MODEL, params(), GOOD, 2, prompt_lengths=np.array([T], np.int64),
                     key=jax.random.key(0), temperature=np.float64(0.5), top_k=np.int64(3),
                     top_p=np.float32(0.9), eos_id=np.int64(1), pad_id=np.int32(0),
                     bucket=np.int64(64))
    python = generate(MODEL, params(), GOOD, 2, prompt_lengths=[T], key=jax.random.key(0),
                      temperature=0.5, top_k=3, top_p=0.9, eos_id=1, pad_id=0, bucket=64)
    np.testing.assert_array_equal(numpy.tokens, python.tokens)


BAD_GENERATE = {
    "max_new_tokens 0": (dict(max_new_tokens=0), r"max_new_tokens must be a positive integer"),
    "max_new_tokens bool": (dict(max_new_tokens=True), r"max_new_tokens must be a positive"),
    "max_new_tokens float": (dict(max_new_tokens=2.0), r"max_new_tokens must be a positive"),
    "prompt rank": (dict(prompt_BT=GOOD[0]), r"prompt_BT must have shape \[batch, time >= 1\]"),
    "prompt empty": (dict(prompt_BT=GOOD[:, :0]), r"prompt_BT must have shape"),
    "prompt float": (dict(prompt_BT=GOOD.astype(jnp.float32)), r"prompt_BT must hold integer"),
    "prompt vocab": (dict(prompt_BT=with_token(GOOD, VOCAB)),
                     r"prompt_BT holds token id 8, outside the vocabulary \[0, 8\)"),
    "prompt -1": (dict(prompt_BT=with_token(GOOD, -1)), r"prompt_BT holds token id -1"),
    "prompt -1 in a row's prompt": (dict(prompt_BT=GOOD.at[0, 1].set(-1), prompt_lengths=[2]),
                                    r"prompt_BT holds token id -1"),
    "variables": (dict(params="variables"), r"params must be the parameter tree"),
    "model": (dict(model="module"), r"model must be a deltajax.models.LanguageModel, got Dense"),
    "lengths shape": (dict(prompt_lengths=[1, 2]),
                      r"prompt_lengths must be \[batch\] = \[1\] integers, got shape \(2,\)"),
    "lengths float": (dict(prompt_lengths=[1.0]), r"prompt_lengths must be \[batch\] = \[1\] int"),
    "lengths 0": (dict(prompt_lengths=[0]), r"prompt_lengths holds 0: .* \[1, 3\]"),
    "lengths long": (dict(prompt_lengths=np.array([4])), r"prompt_lengths holds 4"),
    "key seed": (dict(key=0), r"key must be a PRNG key"),
    "key shape": (dict(key=jnp.zeros(3, jnp.uint32)), r"key must be a PRNG key"),
    "sampling without a key": (dict(top_k=3), r"key: temperature, top_k and top_p sample"),
    "temperature negative": (dict(key=KEY, temperature=-1.0),
                             r"temperature must lie in \[0.0, inf\]"),
    "temperature nan": (dict(key=KEY, temperature=float("nan")), r"temperature must lie in"),
    "temperature str": (dict(key=KEY, temperature="hot"), r"temperature must be a real number"),
    "top_k 0": (dict(key=KEY, top_k=0), r"top_k must be a positive integer"),
    "top_k float": (dict(key=KEY, top_k=2.0), r"top_k must be a positive integer"),
    "top_p 0": (dict(key=KEY, top_p=0.0), r"top_p must lie in \(0.0, 1.0\]"),
    "top_p above 1": (dict(key=KEY, top_p=1.5), r"top_p must lie in"),
    "eos vocab": (dict(eos_id=VOCAB), r"eos_id must be a token id in \[0, 8\) or a non-empty"),
    "eos -1": (dict(eos_id=-1), r"eos_id must be a token id"),
    "eos empty": (dict(eos_id=[]), r"eos_id must be a token id"),
    "eos float": (dict(eos_id=1.0), r"eos_id must be a token id"),
    "eos bool": (dict(eos_id=True), r"eos_id must be a token id"),
    "pad float": (dict(pad_id=0.0), r"pad_id must be an int32 integer"),
    "pad too large": (dict(pad_id=2 ** 40), r"pad_id must be an int32 integer"),
    "bucket 0": (dict(bucket=0), r"bucket must be a positive integer"),
}


@pytest.mark.parametrize("name", BAD_GENERATE)
def test_generate_rejects_bad_arguments_naming_them(name):
    import flax.linen as nn
    arguments = dict(model=MODEL, params=params(), prompt_BT=GOOD, max_new_tokens=2)
    arguments.update(BAD_GENERATE[name][0])
    if arguments["params"] == "variables":
        arguments["params"] = {"params": params()}
    if arguments["model"] == "module":
        arguments["model"] = nn.Dense(3)
    with pytest.raises(ValueError, match=BAD_GENERATE[name][1]):
        generate(**arguments)


def test_generate_under_jit_with_a_bad_prompt_or_lengths_gives_minus_one_tokens():
    run = jax.jit(lambda prompt, lengths: generate(MODEL, params(), prompt, 2,
                                                   prompt_lengths=lengths).tokens)
    assert np.all(run(GOOD, jnp.array([T]))[:, T:] >= 0)
    np.testing.assert_array_equal(run(with_token(GOOD, VOCAB), jnp.array([T]))[:, T:], -1)
    np.testing.assert_array_equal(run(GOOD, jnp.array([T + 1]))[:, T:], -1)
