"""ModelConfig's options: the grokking models' ReLU MLP without norms, and the option groups
(what each mixer reads, dict form, defaults, and the errors that name the field)."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from deltajax.models import (
    MIXERS,
    AttentionOptions,
    ConvOptions,
    DeltaProductOptions,
    DeltaRuleOptions,
    LanguageModel,
    LinearAttentionOptions,
    ModelConfig,
    build_mixer,
)
from deltajax.ops import Backend


def _init(config):
    tokens = jnp.zeros((2, 3), jnp.int32)
    model = LanguageModel(config)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), tokens)["params"]
    return jax.jit(model.apply), params, tokens


def test_relu_mlp_without_norms_matches_nanda_layout_and_differs_from_rmsnorm():
    base = dict(vocab_size=10, d_model=16, num_layers=1, num_heads=2, mixer="attention",
                mlp="relu", mlp_hidden_dim=24, tie_embeddings=False)
    bare_model, bare, tokens = _init(ModelConfig(**base, norm=None))
    mlp = bare["blocks_0"]["mlp"]
    assert mlp["up_proj"]["kernel"].shape == (16, 24) and mlp["up_proj"]["bias"].shape == (24,)
    assert mlp["down_proj"]["kernel"].shape == (24, 16) and mlp["down_proj"]["bias"].shape == (16,)
    assert set(bare) == {"embed", "blocks_0", "head"} and set(bare["blocks_0"]) == {"mixer", "mlp"}
    normed_model, normed, _ = _init(ModelConfig(**base))
    assert {"mixer_norm", "mlp_norm"} <= set(normed["blocks_0"]) and "final_norm" in normed
    # The same weights with and without the norms (RMSNorm scales start at 1): other logits.
    shared = {"embed": normed["embed"], "head": normed["head"],
              "blocks_0": {k: normed["blocks_0"][k] for k in ("mixer", "mlp")}}
    logits = bare_model({"params": shared}, tokens)
    assert logits.shape == (2, 3, 10) and logits.dtype == jnp.float32
    assert not jnp.allclose(logits, normed_model({"params": normed}, tokens))


def test_defaults_keep_swiglu_and_rmsnorm():
    config = ModelConfig(vocab_size=10, d_model=16, num_layers=1, num_heads=2)
    assert config.mlp == "swiglu" and config.norm == "rmsnorm" and config.mlp_dim == 64


@pytest.mark.parametrize("field, value", [("mlp", "gelu"), ("norm", "layernorm"),
                                          ("mlp_hidden_dim", 0), ("position_embedding", 0),
                                          ("embed_init_std", 0.0), ("embed_init_std", True)])
def test_bad_options_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
        ModelConfig(vocab_size=10, d_model=16, num_heads=2, **{field: value})


GROUPS = dict(conv=dict(enabled=False, size=3),
              delta_rule=dict(allow_neg_eigval=True, use_output_gate=False, use_forget_gate=True,
                              backend="recurrent", chunk_size=16),
              delta_product=dict(num_householder=3), linear_attention=dict(chunk_size=8),
              attention=dict(window_size=5, rope_theta=500.0, conv_size=3))
EVERY_MIXER = dict(vocab_size=10, d_model=16, num_heads=2, num_layers=len(MIXERS),
                   layer_mixers=tuple(MIXERS))


def test_option_groups_reach_the_mixers_that_read_them():
    config = ModelConfig(**EVERY_MIXER, **GROUPS)
    built = {name: build_mixer(config, name, parent=None) for name in MIXERS}
    for name in ("deltanet", "gated_deltanet", "delta_product", "linear_attention"):
        assert (built[name].use_short_conv, built[name].conv_size) == (False, 3), name
    for name in ("deltanet", "gated_deltanet", "delta_product"):
        mixer = built[name]
        assert (mixer.allow_neg_eigval, mixer.use_output_gate, mixer.use_forget_gate,
                mixer.backend, mixer.chunk_size) == (True, False, True, Backend.RECURRENT, 16), name
    assert built["delta_product"].num_householder == 3
    assert built["linear_attention"].chunk_size == 8
    assert built["attention"].rope_theta == built["swa"].rope_theta == 500.0
    assert built["attention"].conv_size == built["swa"].conv_size == 3
    assert built["attention"].window_size is None and built["swa"].window_size == 5


def test_unset_groups_are_the_mixers_defaults():
    config = ModelConfig(**EVERY_MIXER)
    assert all(getattr(config, group) is None for group in GROUPS)
    assert config.options("delta_rule") == DeltaRuleOptions()
    built = {name: build_mixer(config, name, parent=None) for name in MIXERS}
    # use_output_gate=None: Gated DeltaNet keeps its published SiLU output gate, DeltaNet none.
    assert built["gated_deltanet"].use_output_gate and not built["deltanet"].use_output_gate
    # use_forget_gate=None: the decay is Gated DeltaNet's alone.
    assert built["gated_deltanet"].use_forget_gate
    assert not built["deltanet"].use_forget_gate and not built["delta_product"].use_forget_gate
    assert built["delta_product"].num_householder == DeltaProductOptions().num_householder == 2
    assert built["swa"].window_size == AttentionOptions().window_size
    assert built["deltanet"].conv_size == ConvOptions().size
    assert built["linear_attention"].chunk_size == LinearAttentionOptions().chunk_size


def test_groups_as_dicts_round_trip_and_load_from_ml_collections():
    config = ModelConfig(**EVERY_MIXER, **GROUPS)
    typed = ModelConfig(**EVERY_MIXER, conv=ConvOptions(**GROUPS["conv"]),
                        delta_rule=DeltaRuleOptions(**GROUPS["delta_rule"]),
                        delta_product=DeltaProductOptions(**GROUPS["delta_product"]),
                        linear_attention=LinearAttentionOptions(**GROUPS["linear_attention"]),
                        attention=AttentionOptions(**GROUPS["attention"]))
    assert config == typed and hash(config) == hash(typed)
    as_dict = config.to_dict()
    assert as_dict["delta_rule"] == GROUPS["delta_rule"] and json.loads(json.dumps(as_dict)) == {
        **as_dict, "layer_mixers": list(MIXERS)}
    assert ModelConfig(**as_dict) == config
    model = ml_collections.ConfigDict(dict(vocab_size=10, d_model=16, num_heads=2, mlp=None,
                                           delta_rule=dict(backend="auto")))
    model.delta_rule.backend = "chunked"   # as --config.model.delta_rule.backend=chunked does
    assert ModelConfig(**model.to_dict()).delta_rule.backend == Backend.CHUNKED


@pytest.mark.parametrize("mixer, group", [
    ("deltanet", "delta_product"), ("deltanet", "linear_attention"), ("deltanet", "attention"),
    ("linear_attention", "delta_rule"), ("attention", "conv"), ("swa", "delta_rule")])
def test_a_group_no_layer_reads_is_rejected(mixer, group):
    # linear_attention + delta_rule: a backend meant for linear attention is refused, not dropped.
    with pytest.raises(ValueError, match=f"ModelConfig.{group} is set but no layer is a"):
        ModelConfig(vocab_size=10, d_model=16, num_heads=2, mixer=mixer, **{group: GROUPS[group]})


@pytest.mark.parametrize("group, options, field", [
    ("conv", dict(size=0), "conv.size"),
    ("conv", dict(enabled=1), "conv.enabled"),
    ("conv", dict(kernel_size=3), "conv.kernel_size"),
    ("delta_rule", dict(backend="cuda"), "delta_rule.backend"),
    ("delta_rule", dict(chunk_size=48), "delta_rule.chunk_size"),
    ("delta_rule", dict(allow_neg_eigval="yes"), "delta_rule.allow_neg_eigval"),
    ("delta_rule", dict(use_output_gate=1), "delta_rule.use_output_gate"),
    ("delta_rule", dict(use_forget_gate="on"), "delta_rule.use_forget_gate"),
    ("delta_product", dict(num_householder=0), "delta_product.num_householder"),
    ("linear_attention", dict(chunk_size=3), "linear_attention.chunk_size"),
    ("linear_attention", dict(backend="chunked"), "linear_attention.backend"),
    ("linear_attention", dict(feature_map="elu"), "linear_attention.feature_map"),
    ("attention", dict(window_size=0), "attention.window_size"),
    ("attention", dict(rope_theta=-1.0), "attention.rope_theta"),
    ("attention", dict(rope=0), "attention.rope"),
    ("attention", dict(conv_size=0), "attention.conv_size"),
    ("attention", 64, "attention"),
])
def test_bad_group_options_name_the_field(group, options, field):
    with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
        ModelConfig(**EVERY_MIXER, **{group: options})


# Nanda's grokking transformer: learned absolute positions, no RoPE, embeddings N(0, 1/d).
LEARNED_POSITIONS = dict(vocab_size=10, d_model=16, num_layers=1, num_heads=2, mixer="attention",
                         mlp="relu", norm=None, position_embedding=4, embed_init_std=0.25,
                         attention=dict(rope=False))
_learned_positions = functools.cache(lambda: _init(ModelConfig(**LEARNED_POSITIONS)))


def test_learned_positions_are_drawn_at_the_given_scale_and_move_the_logits():
    apply, params, _ = _learned_positions()
    assert params["pos_embed"]["embedding"].shape == (4, 16)
    for table in (params["embed"]["embedding"], params["pos_embed"]["embedding"]):
        assert 0.18 < float(jnp.std(table)) < 0.32  # 0.25 from 64-160 draws, not FLA's 0.02
    # One token three times: only the positions tell the rows apart.
    same = jnp.full((1, 3), 7, jnp.int32)
    logits = apply({"params": params}, same)[0]
    # Rows moved by N(0, 0.25) position vectors differ by O(0.1); 1e-4 is far below that.
    assert not jnp.allclose(logits[1], logits[2], atol=1e-4)
    no_positions = {**params, "pos_embed": {"embedding": jnp.zeros((4, 16))}}
    plain = apply({"params": no_positions}, same)[0]
    # The same f32 math on identical rows, differing only in how many keys the softmax sums.
    np.testing.assert_allclose(plain[1], plain[2], rtol=1e-5, atol=1e-6)


def test_without_rope_or_positions_attention_ignores_the_order_of_the_past():
    config = ModelConfig(**{**LEARNED_POSITIONS, "position_embedding": None})
    apply, params, _ = _init(config)
    last = lambda tokens: apply({"params": params}, jnp.array([tokens]))[0, -1]
    np.testing.assert_allclose(last([1, 2, 3, 9]), last([3, 1, 2, 9]), rtol=1e-5, atol=1e-6)
    with_rope = ModelConfig(**{**LEARNED_POSITIONS, "position_embedding": None,
                               "attention": None})
    rotated = lambda tokens: jax.jit(LanguageModel(with_rope).apply)(
        {"params": params}, jnp.array([tokens]))[0, -1]
    assert not jnp.allclose(rotated([1, 2, 3, 9]), rotated([3, 1, 2, 9]), atol=1e-5)


def test_learned_positions_restart_per_segment_and_refuse_what_they_cannot_do():
    model = LanguageModel(ModelConfig(**LEARNED_POSITIONS))
    apply, params, _ = _learned_positions()
    packed = apply({"params": params}, jnp.array([[4, 5, 6, 4]]), jnp.array([[0, 0, 0, 1]]))
    alone = apply({"params": params}, jnp.array([[4]]))
    np.testing.assert_allclose(packed[0, 3], alone[0, 0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="ModelConfig.position_embedding=4"):
        model.apply({"params": params}, jnp.zeros((1, 5), jnp.int32))
    with pytest.raises(ValueError, match="position_embedding must be None"):
        model.apply({"params": params}, jnp.zeros((1, 1), jnp.int32), model.init_cache(1, 4),
                    method=model.extend)


GATED_PRODUCT = ModelConfig(vocab_size=10, d_model=16, num_heads=2, num_layers=1,
                            mixer="delta_product", delta_product=dict(num_householder=2),
                            delta_rule=dict(allow_neg_eigval=True, use_forget_gate=True))
UNGATED_PRODUCT = dataclasses.replace(GATED_PRODUCT, delta_rule=dict(allow_neg_eigval=True))
DECAY = ("a_proj", "A_log", "dt_bias")


def _param_shapes(config):
    tokens = jnp.zeros((1, 3), jnp.int32)
    shapes = jax.eval_shape(LanguageModel(config).init, jax.random.PRNGKey(0), tokens)
    return jax.tree.map(lambda x: x.shape, shapes["params"]["blocks_0"]["mixer"])


def test_gated_delta_product_has_fla_decay_parameters_and_others_keep_theirs():
    gated, ungated = _param_shapes(GATED_PRODUCT), _param_shapes(UNGATED_PRODUCT)
    # FLA's GatedDeltaProduct: one decay per head and token, a_proj [D, H], A_log [H], dt_bias [H].
    assert gated["a_proj"] == {"kernel": (16, 2)} and gated["A_log"] == gated["dt_bias"] == (2,)
    assert set(gated) - set(ungated) == set(DECAY)
    assert {k: v for k, v in gated.items() if k not in DECAY} == ungated
    assert gated["k_proj"] == {"kernel": (16, 2 * 16)}  # n_h keys per token
    # Gated DeltaNet keeps its decay; DeltaNet (None: the default) has none.
    assert set(DECAY) <= set(_param_shapes(dataclasses.replace(
        UNGATED_PRODUCT, mixer="gated_deltanet", delta_product=None)))
    assert not set(DECAY) & set(_param_shapes(dataclasses.replace(
        UNGATED_PRODUCT, mixer="deltanet", delta_product=None)))


def test_gated_delta_product_decodes_as_its_forward_and_its_decay_acts():
    model = LanguageModel(GATED_PRODUCT)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 7), 0, 10)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), tokens)["params"]
    logits = jax.jit(model.apply)({"params": params}, tokens)
    cache = model.init_cache(2, 7)
    prompt, cache = jax.jit(functools.partial(model.apply, method=model.extend))(
        {"params": params}, tokens[:, :3], cache)
    decode = jax.jit(functools.partial(model.apply, method=model.decode_step))
    steps = []
    for t in range(3, 7):
        step, cache = decode({"params": params}, tokens[:, t], cache)
        steps.append(step)
    np.testing.assert_allclose(prompt, logits[:, :3], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jnp.stack(steps, 1), logits[:, 3:], rtol=1e-4, atol=1e-5)
    # The same weights without the decay compute another function: the gate is used.
    mixer = params["blocks_0"]["mixer"]
    without = {**params, "blocks_0": {**params["blocks_0"], "mixer": {
        k: v for k, v in mixer.items() if k not in DECAY}}}
    ungated = jax.jit(LanguageModel(UNGATED_PRODUCT).apply)({"params": without}, tokens)
    assert not np.allclose(ungated, logits, atol=1e-4)
