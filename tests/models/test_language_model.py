"""LanguageModel over every mixer: decoding, backends, dtypes, gradients, sizes.

Every mixer of the table sits in one model (EVERY), so each behaviour compiles once for all of
them; BARE is the other corner (no MLP, untied head, no convolutions, beta in [0, 2])."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.models import MIXERS, LanguageModel, ModelConfig, count_params, generate, hybrid
from tests.numerics import relative_error

VOCAB, B, T = 48, 2, 11
SMALL = dict(vocab_size=VOCAB, d_model=16, num_heads=2)
# The delta-rule layers last: the gradients of the first layers pass through the f32 rounding
# of every later layer's backward, which the backend comparison would measure as well.
EVERY_MIXER = ("attention", "swa", "linear_attention", "delta_product", "deltanet",
               "gated_deltanet")
assert sorted(EVERY_MIXER) == sorted(MIXERS), "a new mixer belongs in EVERY_MIXER"
EVERY = ModelConfig(**SMALL, num_layers=len(EVERY_MIXER), layer_mixers=EVERY_MIXER,
                    delta_rule=dict(chunk_size=8), linear_attention=dict(chunk_size=8),
                    attention=dict(window_size=4))
BARE = ModelConfig(**SMALL, num_layers=1, mlp=None, tie_embeddings=False, conv=dict(enabled=False),
                   delta_rule=dict(allow_neg_eigval=True, chunk_size=8))
CONFIGS = {"every_mixer": EVERY, "no_mlp_untied": BARE}
TOKENS = jax.random.randint(jax.random.PRNGKey(0), (B, T), 0, VOCAB)


def with_backend(config, backend):
    return dataclasses.replace(config, delta_rule=dataclasses.replace(config.delta_rule,
                                                                      backend=backend))


@functools.cache
def model_and_params(config):
    model = LanguageModel(config)
    return model, jax.jit(model.init)(jax.random.PRNGKey(1), TOKENS)["params"]


@functools.cache
def forward(config):
    """The jitted forward of `config`'s model (one compile per config and token shape)."""
    return jax.jit(model_and_params(config)[0].apply)


@functools.cache
def loss_and_grads(config, backend):
    """Next-token loss and its gradients, with config's parameters and the given backend."""
    _, params = model_and_params(config)
    model = LanguageModel(with_backend(config, backend))
    targets = jnp.roll(TOKENS, -1, axis=1)

    def loss(params):
        logits = model.apply({"params": params}, TOKENS)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))
    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("name", CONFIGS)
def test_prefill_then_token_by_token_decoding_reproduces_the_forward(name):
    model, params = model_and_params(CONFIGS[name])
    logits = forward(CONFIGS[name])({"params": params}, TOKENS)
    assert logits.shape == (B, T, VOCAB) and logits.dtype == jnp.float32
    cache = model.init_cache(B, T)
    prompt_logits, cache = jax.jit(functools.partial(model.apply, method=model.extend))(
        {"params": params}, TOKENS[:, :4], cache)
    decode = jax.jit(functools.partial(model.apply, method=model.decode_step))
    steps = []
    for t in range(4, T):
        step_logits, cache = decode({"params": params}, TOKENS[:, t], cache)
        steps.append(step_logits)
    assert relative_error(prompt_logits, logits[:, :4]) < 1e-4
    assert relative_error(jnp.stack(steps, 1), logits[:, 4:]) < 1e-4


@pytest.mark.parametrize("name", CONFIGS)
def test_every_parameter_gets_a_finite_nonzero_gradient(name):
    _, grads = loss_and_grads(CONFIGS[name], "recurrent")
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(grad)) and np.any(grad != 0), jax.tree_util.keystr(path)


@pytest.mark.parametrize("backend", ["chunked", "pallas"])
def test_every_backend_gives_the_recurrent_model(backend):
    # EVERY holds each delta-rule mixer; the recurrent gradients are nonzero (test above), so
    # matching them leaf by leaf also says the backend's gradients reach every parameter.
    loss_rec, grads_rec = loss_and_grads(EVERY, "recurrent")
    loss_fast, grads_fast = loss_and_grads(EVERY, backend)
    assert abs(float(loss_rec - loss_fast)) < 1e-5 * abs(float(loss_rec))
    for path, grad in jax.tree_util.tree_leaves_with_path(grads_fast):
        grad_rec = functools.reduce(lambda tree, key: tree[key.key], path, grads_rec)
        assert relative_error(grad, grad_rec) < 1e-4, jax.tree_util.keystr(path)


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
    config = dataclasses.replace(EVERY, dtype="bfloat16")
    model = LanguageModel(config)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(1), TOKENS)["params"]
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(shapes))
    _, params_f32 = model_and_params(EVERY)
    logits, state = jax.jit(functools.partial(model.apply, capture_intermediates=True))(
        {"params": params_f32}, TOKENS)
    assert logits.dtype == jnp.float32
    mixer_outputs = [state["intermediates"][f"blocks_{i}"]["mixer"]["__call__"][0]
                     for i in range(EVERY.num_layers)]
    assert all(y.dtype == jnp.bfloat16 for y in mixer_outputs)
    # Each bf16 op rounds to 2^-9 relative; sums over d_model = 16 with cancellation, the blocks
    # and the tied head compound that to a few percent at random initialisation (measured over
    # mixers and seeds). A lost cast or a bf16 state is pinned by the op tests; this bounds the
    # drift.
    assert relative_error(logits, forward(EVERY)({"params": params_f32}, TOKENS)) < 0.1


def test_greedy_generate_matches_argmax_of_the_full_forward():
    model, params = model_and_params(EVERY)
    prompt, new = 3, 4
    generated = generate(model, params, TOKENS[:, :prompt], max_new_tokens=new)
    # The forward is causal, so the logits at t of a zero-padded T-token buffer are those of its
    # first t + 1 tokens: one compiled shape serves every step.
    expected = jnp.zeros((B, T), TOKENS.dtype).at[:, :prompt].set(TOKENS[:, :prompt])
    for t in range(prompt, prompt + new):
        next_token = jnp.argmax(forward(EVERY)({"params": params}, expected)[:, t - 1], axis=-1)
        expected = expected.at[:, t].set(next_token.astype(expected.dtype))
    np.testing.assert_array_equal(generated.tokens, expected[:, :prompt + new])
    np.testing.assert_array_equal(generated.lengths, [prompt + new] * B)


def test_parameter_count_follows_the_architecture():
    d, F, V = 16, 64, VOCAB          # F = 8/3 * 16 rounded up to 32 = 64
    norm, mlp = d, 3 * d * F
    linear_attention = 4 * d * d + 3 * 4 * d + d // 2   # q,k,v,o; 3 convs; output norm
    deltanet = linear_attention + d * 2                 # and beta
    attention = 4 * d * d
    block = lambda mixer: mixer + 2 * norm + mlp
    embeddings = V * d + norm

    def count(mixer):
        config = ModelConfig(**SMALL, mixer=mixer)
        shapes = jax.eval_shape(LanguageModel(config).init, jax.random.PRNGKey(1), TOKENS)
        return count_params(shapes["params"])
    assert count("deltanet") == embeddings + 2 * block(deltanet)
    assert count("linear_attention") == embeddings + 2 * block(linear_attention)
    assert count("attention") == embeddings + 2 * block(attention)


def test_bad_configs_fail_at_construction_naming_the_field():
    with pytest.raises(ValueError, match="mixer 'mamba' is unknown"):
        ModelConfig(vocab_size=8, mixer="mamba")
    with pytest.raises(ValueError, match="num_heads=3 must divide d_model=64"):
        ModelConfig(vocab_size=8, d_model=64, num_heads=3)
    with pytest.raises(ValueError, match="layer_mixers has 1 names for num_layers=2"):
        ModelConfig(vocab_size=8, layer_mixers=("deltanet",))
    with pytest.raises(ValueError, match="ModelConfig.dtype"):
        ModelConfig(vocab_size=8, dtype="float16")
    with pytest.raises(ValueError, match="ModelConfig.vocab_size"):
        ModelConfig(vocab_size=0)
    with pytest.raises(ValueError, match="even head dim"):
        ModelConfig(vocab_size=8, d_model=12, num_heads=4, mixer="attention")


def test_hybrid_places_the_other_mixer_every_n_layers():
    assert hybrid("deltanet", "swa", 2, 5) == ("deltanet", "swa", "deltanet", "swa", "deltanet")
    config = ModelConfig(vocab_size=8, num_layers=4,
                         layer_mixers=hybrid("deltanet", "attention", 4, 4))
    assert config.mixers == ("deltanet",) * 3 + ("attention",)
