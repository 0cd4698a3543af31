"""Each mixer on its own: shapes, causality, its cache, and how the family relates."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.layers import (Attention, DeltaNet, DeltaProduct, GatedDeltaNet, LinearAttention,
                             ShortConvolution)
from tests.numerics import relative_error

D, H = 16, 2
MIXERS = {
    "deltanet": DeltaNet(D, H, chunk_size=8),
    "deltanet_no_conv_neg_eig": DeltaNet(D, H, use_short_conv=False, allow_neg_eigval=True, chunk_size=8),
    "gated_deltanet": GatedDeltaNet(D, H, chunk_size=8),
    "delta_product": DeltaProduct(D, H, num_householder=3, chunk_size=8),
    "linear_attention": LinearAttention(D, H, chunk_size=8),
    "attention": Attention(D, H),
    "swa": Attention(D, H, window_size=3),
}


def init_and_apply(mixer, x):
    params = mixer.init(jax.random.PRNGKey(0), x)
    return params, jax.jit(mixer.apply)(params, x)


@pytest.mark.parametrize("name", MIXERS)
def test_mixer_output_at_t_ignores_later_tokens(name):
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 19, D))
    params, y = init_and_apply(MIXERS[name], x)
    assert y.shape == x.shape and y.dtype == jnp.float32 and np.all(np.isfinite(y))
    changed = x.at[:, 11:].set(jax.random.normal(jax.random.PRNGKey(2), (2, 8, D)))
    y_changed = jax.jit(MIXERS[name].apply)(params, changed)
    np.testing.assert_array_equal(y_changed[:, :11], y[:, :11])
    assert np.any(np.abs(y_changed[:, 11:] - y[:, 11:]) > 1e-4)


def test_delta_product_with_one_step_is_delta_net():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 19, D))
    params, y_net = init_and_apply(DeltaNet(D, H, chunk_size=8), x)
    y_product = jax.jit(DeltaProduct(D, H, num_householder=1, chunk_size=8).apply)(params, x)
    # Same parameters, same math; only XLA's fusion of the two programs may differ (f32 rounding).
    assert relative_error(y_product, y_net) < 1e-6


def test_short_convolution_continues_from_its_tail():
    conv = ShortConvolution(4)
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 10, 5))
    params = conv.init(jax.random.PRNGKey(0), x)
    y_full, tail_full = conv.apply(params, x)
    y_head, tail = conv.apply(params, x[:, :6])
    y_rest, tail = conv.apply(params, x[:, 6:], tail)
    np.testing.assert_allclose(jnp.concatenate([y_head, y_rest], 1), y_full, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(tail, tail_full)
    np.testing.assert_array_equal(tail_full, x[:, -3:])


def test_head_count_must_divide_width():
    x = jnp.ones((1, 4, 10))
    for mixer in (DeltaNet(10, 3), Attention(10, 4)):
        with pytest.raises(ValueError, match="must divide d_model=10"):
            mixer.init(jax.random.PRNGKey(0), x)
