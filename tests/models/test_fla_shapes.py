"""FLA's published layer shapes (head_dim, expand_v, grouped value heads, gated DeltaProduct),
its initialisation (ModelConfig.init="fla") and its weight-decay groups.

Parameter counts come from jax.eval_shape (no compile); the expected numbers are written per
projection from FLA's modules (fla-org/flash-linear-attention, fla/layers and fla/models)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.layers import DeltaProduct, LinearAttention
from deltajax.models import LanguageModel, ModelConfig
from deltajax.models.language_model import fla_init
from deltajax.train.optimizer import FLA_NO_DECAY_NAMES, decay_mask

VOCAB, CONV, LAYERS = 1000, 4, 2
HEAD_DIM = 4  # the grouped-value-head tests


def fla_mlp_size(hidden):
    # fla/modules/mlp.py GatedMLP: hidden_ratio 4, 2/3 of it, rounded up to a multiple of 256.
    return 256 * ((int(hidden * 4 * 2 / 3) + 255) // 256)


def fla_model(hidden, mixer_params):
    """fla/models/*/modeling_*.py: embeddings, per layer attn_norm + mixer + mlp_norm + GatedMLP
    (gate_proj, up_proj, down_proj), final norm, untied lm_head."""
    block = hidden + mixer_params + hidden + 3 * hidden * fla_mlp_size(hidden)
    return VOCAB * hidden + LAYERS * block + hidden + hidden * VOCAB


def fla_delta_net(hidden, num_heads, expand_k=1, expand_v=1):
    # fla/layers/delta_net.py DeltaNet (use_gate=False, use_beta, short convs without bias).
    key_dim, value_dim = int(hidden * expand_k), int(hidden * expand_v)
    q_proj = k_proj = hidden * key_dim
    v_proj = hidden * value_dim
    b_proj = hidden * num_heads
    convs = CONV * (key_dim + key_dim + value_dim)     # depthwise Conv1d weights [C, 1, size]
    o_norm = value_dim // num_heads                    # RMSNorm(head_v_dim)
    o_proj = value_dim * hidden
    return q_proj + k_proj + v_proj + b_proj + convs + o_norm + o_proj


def fla_gated_delta_product(hidden, head_dim, num_heads, expand_v, num_v_heads=None,
                            num_householder=1, use_forget_gate=True):
    """fla/layers/gated_deltaproduct.py GatedDeltaProduct (use_output_gate=True); with
    num_householder=1 and the forget gate it is fla/layers/gated_deltanet.py GatedDeltaNet."""
    n, hv = num_householder, num_v_heads or num_heads
    head_v_dim = int(head_dim * expand_v)
    key_dim, value_dim = num_heads * head_dim, hv * head_v_dim
    q_proj = hidden * key_dim
    k_proj = hidden * key_dim * n
    v_proj = hidden * value_dim * n
    b_proj = hidden * hv * n
    gate = hidden * hv + hv + hv if use_forget_gate else 0   # a_proj, A_log, dt_bias
    convs = CONV * (key_dim + key_dim * n + value_dim * n)
    g_proj = hidden * value_dim
    o_norm = head_v_dim                                       # FusedRMSNormGated(head_v_dim)
    o_proj = value_dim * hidden
    return q_proj + k_proj + v_proj + b_proj + gate + convs + g_proj + o_norm + o_proj


def _fla_config(hidden, **model):
    return ModelConfig(vocab_size=VOCAB, d_model=hidden, num_layers=LAYERS, tie_embeddings=False,
                       mlp_hidden_dim=fla_mlp_size(hidden), **model)


def _param_count(config):
    shapes = jax.eval_shape(LanguageModel(config).init, jax.random.PRNGKey(0),
                            jnp.zeros((1, 4), jnp.int32))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


PUBLISHED = {
    # fla/models/delta_net/configuration_delta_net.py: hidden 2048, 16 heads, expand_k = v = 1.
    "delta_net": (_fla_config(2048, num_heads=16, mixer="deltanet"),
                  fla_model(2048, fla_delta_net(2048, 16))),
    # fla/models/gated_deltanet/configuration_gated_deltanet.py: 6 heads of 256, expand_v 2
    # (6 does not divide 2048: the heads are 0.75 of the width).
    "gated_delta_net": (
        _fla_config(2048, num_heads=6, head_dim=256, expand_v=2, mixer="gated_deltanet"),
        fla_model(2048, fla_gated_delta_product(2048, 256, 6, 2))),
    "gated_delta_net_grouped_values": (
        _fla_config(2048, num_heads=6, head_dim=128, expand_v=2, num_v_heads=12,
                    mixer="gated_deltanet"),
        fla_model(2048, fla_gated_delta_product(2048, 128, 6, 2, num_v_heads=12))),
    # fla/layers/gated_deltaproduct.py defaults: 2 Householder steps, forget gate, beta in [0, 2].
    "gated_delta_product": (
        _fla_config(2048, num_heads=6, head_dim=256, expand_v=2, mixer="delta_product",
                    delta_rule=dict(use_forget_gate=True, use_output_gate=True,
                                    allow_neg_eigval=True),
                    delta_product=dict(num_householder=2)),
        fla_model(2048, fla_gated_delta_product(2048, 256, 6, 2, num_householder=2))),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_fla_shapes_have_fla_parameter_counts(name):
    config, expected = PUBLISHED[name]
    assert _param_count(config) == expected


def test_gated_delta_net_published_shape_has_fla_projection_shapes():
    shapes = jax.eval_shape(LanguageModel(PUBLISHED["gated_delta_net"][0]).init,
                            jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
    mixer = jax.tree.map(lambda x: x.shape, shapes["params"]["blocks_0"]["mixer"])
    assert mixer["q_proj"] == mixer["k_proj"] == {"kernel": (2048, 6 * 256)}
    assert mixer["v_proj"] == mixer["g_proj"] == {"kernel": (2048, 6 * 512)}
    assert mixer["o_proj"] == {"kernel": (6 * 512, 2048)} and mixer["o_norm"] == {"scale": (512,)}
    assert mixer["A_log"] == mixer["dt_bias"] == (6,)


def _grouped_to_full(params, groups, householder):
    """params of a mixer with H q/k heads shared by groups of value heads -> the same mixer with
    H * groups q/k heads, each q/k head copied for its group."""
    def copy_heads(kernel, n):
        rows, width = kernel.shape
        heads = kernel.reshape(rows, n, -1, HEAD_DIM)
        return jnp.repeat(heads, groups, axis=2).reshape(rows, width * groups)
    out = dict(params)
    for name, n in (("q_proj", 1), ("k_proj", householder), ("q_conv", 1), ("k_conv", householder)):
        out[name] = {"kernel": copy_heads(params[name]["kernel"], n)}
    return out



GROUPED_LAYERS = {  # name -> (layer with 2 q/k heads, Householder steps)
    "gated_delta_product": (functools.partial(
        DeltaProduct, num_householder=2, use_forget_gate=True, use_output_gate=True,
        backend="recurrent"), 2),
    "linear_attention": (functools.partial(LinearAttention, chunk_size=4), 1),
}


def test_grouped_value_heads_share_query_key_heads_as_fla():
    # FLA maps value head i to q/k head i // (num_v_heads // num_heads): 6 value heads over 2
    # q/k heads compute what 6 q/k heads do when each is a copy of the one serving its group.
    kw = dict(d_model=8, head_dim=HEAD_DIM, expand_v=1.5)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8))

    @jax.jit  # one compile for every layer's init and both of its models
    def outputs(key):
        out = {}
        for name, (make, householder) in GROUPED_LAYERS.items():
            grouped, full = make(num_heads=2, num_v_heads=6, **kw), make(num_heads=6, **kw)
            params = grouped.init(key, x)["params"]
            out[name] = (grouped.apply({"params": params}, x), full.apply(
                {"params": _grouped_to_full(params, 3, householder)}, x))
        return out
    for name, (y, y_full) in outputs(jax.random.PRNGKey(1)).items():
        # The same f32 math in two programs (gathered vs copied heads): only XLA's fusion and
        # summation order differ, a few ulps of values of order 1.
        np.testing.assert_allclose(y, y_full, rtol=1e-5, atol=1e-6, err_msg=name)
        # Each value head has its own state: num_v_heads states of [K, V] = [4, 6].
        make = GROUPED_LAYERS[name][0]
        assert make(num_heads=2, num_v_heads=6, **kw).init_cache(2, 5)["state"].shape == (
            2, 6, 4, 6)


@pytest.mark.parametrize("field, value, match", [
    ("head_dim", 0, "ModelConfig.head_dim must be a positive integer"),
    ("expand_v", 0, "ModelConfig.expand_v must be a positive number"),
    ("expand_v", 0.3, r"ModelConfig.expand_v=0.3 times the head dim 8 must be a whole number"),
    ("num_v_heads", 3, "ModelConfig.num_v_heads=3 must be a multiple of num_heads=2"),
    ("init", "xavier", "ModelConfig.init must be one of"),
])
def test_bad_head_options_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(vocab_size=8, d_model=16, num_heads=2, **{field: value})


def test_head_options_need_a_layer_that_reads_them_and_attention_needs_divisible_heads():
    for field, value in (("head_dim", 8), ("expand_v", 2), ("num_v_heads", 4)):
        with pytest.raises(ValueError, match=f"ModelConfig.{field} is set but no layer is a"):
            ModelConfig(vocab_size=8, d_model=16, num_heads=2, mixer="attention", **{field: value})
    # head_dim frees the delta-rule heads from d_model / num_heads, not attention's.
    ModelConfig(vocab_size=8, d_model=16, num_heads=3, head_dim=8)
    with pytest.raises(ValueError, match="num_heads=3 must divide d_model=16"):
        ModelConfig(vocab_size=8, d_model=16, num_heads=3, head_dim=8, num_layers=2,
                    layer_mixers=("deltanet", "attention"))
    with pytest.raises(ValueError, match="ModelConfig.num_heads=3 must divide d_model=16"):
        ModelConfig(vocab_size=8, d_model=16, num_heads=3)


INIT_CONFIG = dict(vocab_size=64, d_model=64, num_heads=2, num_layers=1, mlp=None,
                   mixer="gated_deltanet", delta_rule=dict(backend="recurrent"))


# Leaves fla_init redraws or keeps, large enough for tight statistics.
TREE = {"mixer": {"A_log": jnp.zeros(20000), "dt_bias": jnp.full(3, 0.5),
                  "o_norm": {"scale": jnp.ones(3)}, "q_proj": {"kernel": jnp.zeros((200, 100))}},
        "embed": {"embedding": jnp.zeros((100, 100))}}


@functools.cache
def _inits():
    """{"lecun": params, "fla": params, "tree": fla_init(TREE)}, from one compile."""
    models = {init: LanguageModel(ModelConfig(**INIT_CONFIG, init=init))
              for init in ("lecun", "fla")}
    tokens = jnp.zeros((1, 1), jnp.int32)
    return jax.jit(lambda key: {"tree": fla_init(TREE, key), **{
        init: model.init(key, tokens)["params"] for init, model in models.items()}})(
        jax.random.PRNGKey(0))


def _init_params(init):
    return _inits()[init]


def _leaves(params, name):
    return [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
            if path[-1].key == name]


def test_fla_init_draws_linears_convolutions_and_embeddings_from_n_0_0p02():
    params = _init_params("fla")
    mixer = params["blocks_0"]["mixer"]
    convs = jnp.concatenate([mixer[c]["kernel"].ravel() for c in ("q_conv", "k_conv", "v_conv")])
    # 768 conv taps: their std is within 10% of 0.02 with probability 1 - 1e-4 or so.
    assert abs(float(jnp.std(convs)) / 0.02 - 1) < 0.1
    for kernel in _leaves(params, "kernel") + _leaves(params, "embedding"):
        assert float(jnp.max(jnp.abs(kernel))) < 6 * 0.02
    kernels = jnp.concatenate([k.ravel() for k in _leaves(params, "kernel")])
    assert abs(float(jnp.std(kernels)) / 0.02 - 1) < 0.02 and abs(float(jnp.mean(kernels))) < 1e-3
    assert all(bool(jnp.all(s == 1)) for s in _leaves(params, "scale"))
    # dt_bias: softplus(dt_bias) in [1e-3, 0.1] under both schemes (FLA's and Mamba's draw).
    dt = jax.nn.softplus(mixer["dt_bias"])
    assert bool(jnp.all((dt > 0.99e-3) & (dt < 0.101)))


def test_default_init_is_unchanged_lecun():
    params = _init_params("lecun")
    mixer = params["blocks_0"]["mixer"]
    # Flax's lecun_normal: std 1 / sqrt(fan_in) = 0.125 for the 64-wide q_proj; the convolution's
    # torch-like uniform has std sqrt(1 / (3 * 4)) ~ 0.29; A_log = log U[1, 16] >= 0.
    assert 0.1 < float(jnp.std(mixer["q_proj"]["kernel"])) < 0.15
    assert float(jnp.std(mixer["q_conv"]["kernel"])) > 0.2
    assert bool(jnp.all(mixer["A_log"] >= 0))


def test_fla_init_draws_a_log_from_log_uniform_0_16_and_keeps_other_leaves():
    tree, out = TREE, _inits()["tree"]
    a = jnp.exp(out["mixer"]["A_log"])
    assert bool(jnp.all((a > 0) & (a < 16))) and abs(float(jnp.mean(a)) - 8) < 0.1
    assert float(jnp.mean(a < 1)) == pytest.approx(1 / 16, abs=0.005)  # lecun's U[1, 16] has none
    kernel = out["mixer"]["q_proj"]["kernel"]
    assert abs(float(jnp.std(kernel)) / 0.02 - 1) < 0.02
    # N(0, 0.02): 68.3% within one std, not a uniform's 57.7%.
    assert float(jnp.mean(jnp.abs(kernel) < 0.02)) == pytest.approx(0.683, abs=0.01)
    assert abs(float(jnp.std(out["embed"]["embedding"])) / 0.02 - 1) < 0.02
    np.testing.assert_array_equal(out["mixer"]["dt_bias"], tree["mixer"]["dt_bias"])
    np.testing.assert_array_equal(out["mixer"]["o_norm"]["scale"], 1)


def test_fla_no_decay_names_leave_out_what_fla_leaves_out():
    config, _ = PUBLISHED["gated_delta_product"]
    shapes = jax.eval_shape(LanguageModel(config).init, jax.random.PRNGKey(0),
                            jnp.zeros((1, 4), jnp.int32))["params"]
    mask = decay_mask(shapes, FLA_NO_DECAY_NAMES)
    decayed = {jax.tree_util.keystr(path): flag
               for path, flag in jax.tree_util.tree_leaves_with_path(mask)}
    undecayed = sorted({path.rsplit("[", 1)[-1].strip("']") for path, flag in decayed.items()
                        if not flag})
    assert undecayed == ["A_log", "dt_bias", "embedding", "scale"]
    # Every kernel (linear and convolution) decays, as FLA's nn.Linear and Conv1d weights do.
    assert all(flag for path, flag in decayed.items() if path.endswith("['kernel']"))
