"""Each mixer on its own: the Mixer protocol, shapes, causality, its cache, and how the family
relates. One input shape for the module: each mixer compiles once per method."""

import functools
import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.layers import (
    Attention,
    DeltaNet,
    DeltaProduct,
    GatedDeltaNet,
    LinearAttention,
    Mixer,
    ShortConvolution,
)
from deltajax.models import MIXERS as MODEL_MIXERS
from deltajax.models import ModelConfig, build_mixer
from tests.numerics import relative_error

D, H, B, T = 16, 2, 2, 11
CUT = 6   # causality: tokens from CUT on are changed
MIXERS = {
    "deltanet": DeltaNet(D, H, chunk_size=8),
    "deltanet_no_conv_neg_eig": DeltaNet(D, H, use_short_conv=False, allow_neg_eigval=True,
                                         chunk_size=8),
    "gated_deltanet": GatedDeltaNet(D, H, chunk_size=8),
    "delta_product": DeltaProduct(D, H, num_householder=3, chunk_size=8),
    "linear_attention": LinearAttention(D, H, chunk_size=8),
    "linear_attention_elu": LinearAttention(D, H, chunk_size=8, feature_map="elu_plus_one"),
    "attention": Attention(D, H),
    "swa": Attention(D, H, window_size=3),
    "swa_short_conv": Attention(D, H, window_size=3, conv_size=3),
}
X_BTD = jax.random.normal(jax.random.PRNGKey(1), (B, T, D))


@functools.cache
def initialised(name):
    """(params, jitted apply, y = mixer(X)) of MIXERS[name], made once for the module."""
    mixer = MIXERS[name]
    params = jax.jit(mixer.init)(jax.random.PRNGKey(0), X_BTD)
    apply = jax.jit(mixer.apply)
    return params, apply, apply(params, X_BTD)


def test_every_mixer_of_the_model_table_is_a_mixer():
    config = ModelConfig(vocab_size=8, d_model=D, num_heads=H, num_layers=len(MODEL_MIXERS),
                         layer_mixers=tuple(MODEL_MIXERS))
    protocol = {name: inspect.signature(getattr(Mixer, name)).parameters
                for name in ("__call__", "extend", "init_cache")}
    for name in MODEL_MIXERS:
        mixer = build_mixer(config, name, parent=None)
        assert isinstance(mixer, Mixer), name
        for method, parameters in protocol.items():
            signature = inspect.signature(getattr(type(mixer), method))
            assert list(signature.parameters) == list(parameters), (name, method)
    assert not isinstance(nn.Dense(4), Mixer)   # the check can fail


@pytest.mark.parametrize("name", MIXERS)
def test_mixer_output_at_t_ignores_later_tokens(name):
    params, apply, y = initialised(name)
    assert y.shape == X_BTD.shape and y.dtype == jnp.float32 and np.all(np.isfinite(y))
    changed = X_BTD.at[:, CUT:].set(jax.random.normal(jax.random.PRNGKey(2), (B, T - CUT, D)))
    y_changed = apply(params, changed)
    np.testing.assert_array_equal(y_changed[:, :CUT], y[:, :CUT])
    assert np.any(np.abs(y_changed[:, CUT:] - y[:, CUT:]) > 1e-4)


@pytest.mark.parametrize("name", MIXERS)
def test_extend_token_by_token_reproduces_the_whole_sequence(name):
    mixer = MIXERS[name]
    params, _, y = initialised(name)
    cache = mixer.init_cache(B, T)
    step = jax.jit(functools.partial(mixer.apply, method=mixer.extend))
    outputs = []
    for t in range(T):
        y_t, new_cache = step(params, X_BTD[:, t:t + 1], cache)
        # A cache keeps its structure, shapes and dtypes (a scan or a jitted loop can carry it).
        assert (jax.tree_util.tree_structure(new_cache) == jax.tree_util.tree_structure(cache)
                and jax.tree_util.tree_all(jax.tree_util.tree_map(
                    lambda a, b: a.shape == b.shape and a.dtype == b.dtype, new_cache, cache)))
        outputs.append(y_t)
        cache = new_cache
    assert relative_error(jnp.concatenate(outputs, 1), y) < 1e-4


def test_sliding_window_cache_is_a_ring_of_window_slots_for_any_length():
    mixer = MIXERS["swa_short_conv"]   # window 3, and the convolutions' tails
    params, _, y = initialised("swa_short_conv")
    cache = mixer.init_cache(B, 10 ** 6)
    assert cache["k"].shape == cache["v"].shape == (B, 3, H, D // H)
    step = jax.jit(functools.partial(mixer.apply, method=mixer.extend))
    outputs = []
    # Chunks longer and shorter than the window, writes that wrap around the ring.
    for start, stop in ((0, 5), (5, 7), (7, 11)):
        y_t, cache = step(params, X_BTD[:, start:stop], cache)
        outputs.append(y_t)
    assert relative_error(jnp.concatenate(outputs, 1), y) < 1e-4
    # A max_len below the window needs no more: max_len positions, which raise when full.
    short = mixer.init_cache(B, 2)
    assert short["k"].shape == (B, 2, H, D // H)
    with pytest.raises(ValueError, match=r"3 tokens do not fit a KV cache of 2 positions"):
        mixer.apply(params, X_BTD[:, :3], short, method=mixer.extend)


def test_delta_product_with_one_step_is_delta_net():
    params, _, y_net = initialised("deltanet")
    y_product = jax.jit(DeltaProduct(D, H, num_householder=1, chunk_size=8).apply)(params, X_BTD)
    # Same parameters, same math; only XLA's fusion of the two programs may differ (f32 rounding).
    assert relative_error(y_product, y_net) < 1e-6


def test_short_convolution_continues_from_its_tail():
    conv = ShortConvolution(4)
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 10, 5))
    params = jax.jit(conv.init)(jax.random.PRNGKey(0), x)
    apply = jax.jit(conv.apply)
    y_full, tail_full = apply(params, x)
    y_head, tail = apply(params, x[:, :6])
    y_rest, tail = apply(params, x[:, 6:], tail)
    np.testing.assert_allclose(jnp.concatenate([y_head, y_rest], 1), y_full, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(tail, tail_full)
    np.testing.assert_array_equal(tail_full, x[:, -3:])


def test_head_count_must_divide_width():
    x = jnp.ones((1, 4, 10))
    for mixer in (DeltaNet(10, 3), LinearAttention(10, 3), Attention(10, 4)):
        with pytest.raises(ValueError, match="must divide d_model=10"):
            mixer.init(jax.random.PRNGKey(0), x)
