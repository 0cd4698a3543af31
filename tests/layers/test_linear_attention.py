"""LinearAttention's feature maps against Katharopoulos et al.'s formula, written out in float64."""

import jax
import numpy as np
import pytest

from deltajax.layers import LinearAttention
from tests.numerics import relative_error

D, H, B, T = 12, 2, 2, 9


def _elu_plus_one(x):
    return np.where(x > 0, x + 1.0, np.exp(x))


def _reference(params, x_BTD, feature_map):
    """SiLU on the projections (FLA's layers without convolutions), then per head
    o_t = sum_{s<=t} (phi(q_t).phi(k_s)) v_s / sum_{s<=t} phi(q_t).phi(k_s) (the normaliser
    included; the op's 1/sqrt(K) scale is left out, as the RMSNorm divides out both), the
    per-head RMSNorm and the output projection."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    x = np.asarray(x_BTD, np.float64)
    K = D // H
    silu = lambda a: a / (1.0 + np.exp(-a))
    q, k, v = (silu(np.einsum("btd,de->bte", x, p[name]["kernel"])).reshape(B, T, H, K)
               for name in ("q_proj", "k_proj", "v_proj"))
    if feature_map == "elu_plus_one":
        q, k = _elu_plus_one(q), _elu_plus_one(k)
    else:
        q, k = (a / np.linalg.norm(a, axis=-1, keepdims=True) for a in (q, k))
    scores = np.einsum("bthk,bshk->bhts", q, k) * np.tril(np.ones((T, T)))
    if feature_map == "elu_plus_one":
        scores = scores / scores.sum(-1, keepdims=True)
    o = np.einsum("bhts,bshv->bthv", scores, v)
    o = o / np.sqrt(np.mean(o ** 2, axis=-1, keepdims=True)) * p["o_norm"]["scale"]
    return np.einsum("bte,ed->btd", o.reshape(B, T, D), p["o_proj"]["kernel"])


@pytest.mark.parametrize("feature_map", ["l2_norm", "elu_plus_one"])
def test_linear_attention_matches_the_written_out_formula(feature_map):
    # No convolutions and a negligible norm eps, so that the formula is the whole layer.
    layer = LinearAttention(D, H, use_short_conv=False, chunk_size=4, feature_map=feature_map,
                            norm_eps=1e-12)
    x = jax.random.normal(jax.random.PRNGKey(3), (B, T, D))
    params = layer.init(jax.random.PRNGKey(4), x)
    y = jax.jit(layer.apply)(params, x)
    assert relative_error(y, _reference(params, x, feature_map)) < 1e-5
    if feature_map == "elu_plus_one":  # the map matters: L2 features give another output
        other = _reference(params, x, "l2_norm")
        assert relative_error(y, other) > 1e-2


def test_an_unknown_feature_map_is_refused_by_name():
    layer = LinearAttention(D, H, feature_map="relu")
    with pytest.raises(ValueError, match="feature_map"):
        layer.init(jax.random.PRNGKey(0), np.zeros((1, 3, D), np.float32))
