"""from_fla: FLA checkpoints made by FLA itself (tests/models/fixtures/fla_*, written by
experiments/make_fla_fixtures.py with flash-linear-attention 0.6.0) give FLA's logits; every
input form reads the same params; mismatched tensors and FLA options deltajax cannot express
raise ValueErrors naming them. No torch: the torch path is checked through a stand-in."""

import json
import os
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from deltajax.models import LanguageModel, from_fla
from tests.numerics import relative_error

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
NAMES = ("delta_net", "gated_deltanet", "gated_deltaproduct")


def _dir(name):
    return os.path.join(FIXTURES, f"fla_{name}")


def _config(name):
    with open(os.path.join(_dir(name), "config.json")) as f:
        return json.load(f)


def _tensors(name):
    return load_file(os.path.join(_dir(name), "model.safetensors"))


def _assert_same_params(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, e)


# What each fixture's FLA config must become (the fixtures' non-default FLA options).
EXPECTED_CONFIG = {
    "delta_net": dict(mixer="deltanet", head_dim=16, expand_v=1, num_v_heads=None,
                      tie_embeddings=True),
    "gated_deltanet": dict(mixer="gated_deltanet", head_dim=8, expand_v=1.5, num_v_heads=4,
                           tie_embeddings=False),
    "gated_deltaproduct": dict(mixer="delta_product", head_dim=8, expand_v=1, num_v_heads=None,
                               tie_embeddings=False),
}


@pytest.mark.parametrize("name", NAMES)
def test_fla_checkpoint_directory_gives_flas_logits(name):
    config, params = from_fla(_dir(name))
    for field, value in EXPECTED_CONFIG[name].items():
        assert getattr(config, field) == value, field
    assert (config.d_model, config.num_layers, config.vocab_size, config.mlp_hidden_dim,
            config.norm_eps) == (32, 2, 64, 32, 1e-6)
    if name == "gated_deltaproduct":
        rule = config.delta_rule
        assert config.delta_product.num_householder == 2
        assert rule.use_forget_gate and rule.use_output_gate and rule.allow_neg_eigval
    expected = np.load(os.path.join(_dir(name), "expected.npz"))
    logits = jax.jit(LanguageModel(config).apply)({"params": params}, expected["tokens"])
    # FLA's naive float32 references against deltajax's float32 path: summation order only
    # (measured ~1.2e-6).
    assert relative_error(logits, expected["logits"]) < 1e-5


def test_mapping_and_torch_like_tensors_give_the_directorys_params():
    class TorchLike:  # what from_fla asks of a torch tensor
        def __init__(self, array):
            self.array = array

        def detach(self):
            return self

        def cpu(self):
            return self

        def float(self):
            return self

        def numpy(self):
            return self.array

    config, params = from_fla(_dir("gated_deltanet"))
    tensors = _tensors("gated_deltanet")
    class ConfigLike:  # a transformers PretrainedConfig (or a ConfigDict): to_dict()
        def to_dict(self):
            return _config("gated_deltanet")

    for checkpoint, fla_config in ((tensors, _config("gated_deltanet")),
                                   ({k: TorchLike(v) for k, v in tensors.items()}, ConfigLike())):
        mapped_config, mapped = from_fla(checkpoint, fla_config)
        assert mapped_config == config
        _assert_same_params(mapped, params)


def test_bfloat16_safetensors_file_and_sharded_index_are_read(tmp_path):
    name = "gated_deltaproduct"
    tensors, config = _tensors(name), _config(name)
    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
    save_file(bf16, str(tmp_path / "bf16.safetensors"))
    _, params = from_fla(str(tmp_path / "bf16.safetensors"), config)
    _, expected = from_fla({k: v.astype(np.float32) for k, v in bf16.items()}, config)
    _assert_same_params(params, expected)
    # save_pretrained's sharded layout: an index naming each tensor's shard, beside config.json.
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:10],
              "model-00002-of-00002.safetensors": names[10:]}
    for shard, shard_names in shards.items():
        save_file({k: tensors[k] for k in shard_names}, str(tmp_path / shard))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: shard for shard, ks in shards.items() for k in ks}}))
    (tmp_path / "config.json").write_text(json.dumps(config))
    _assert_same_params(from_fla(tmp_path)[1], from_fla(_dir(name))[1])


def test_tied_lm_head_is_accepted_only_as_a_copy_of_the_embeddings():
    tensors, config = _tensors("delta_net"), _config("delta_net")
    assert "lm_head.weight" not in tensors  # save_pretrained drops the tied copy
    _, params = from_fla({**tensors, "lm_head.weight": tensors["model.embeddings.weight"]},
                         config)
    assert "head" not in params
    with pytest.raises(ValueError, match=r"checkpoint\['lm_head.weight'\] differs from"):
        from_fla({**tensors, "lm_head.weight": tensors["model.embeddings.weight"] + 1}, config)


def test_missing_extra_and_misshapen_tensors_are_named():
    tensors, config = _tensors("gated_deltanet"), _config("gated_deltanet")
    missing = dict(tensors)
    del missing["model.layers.1.attn.dt_bias"]
    with pytest.raises(ValueError, match=r"missing tensors: model.layers.1.attn.dt_bias \(4,\)"):
        from_fla(missing, config)
    extra = {**tensors, "model.layers.0.attn.q_conv1d.bias": np.zeros(16, np.float32)}
    with pytest.raises(ValueError, match=r"unused tensors: model.layers.0.attn.q_conv1d.bias$"):
        from_fla(extra, config)
    # g_proj transposed ([in, out] where torch keeps [out, in]).
    wrong = {**tensors, "model.layers.0.attn.g_proj.weight":
             tensors["model.layers.0.attn.g_proj.weight"].T}
    with pytest.raises(ValueError, match=r"wrong shapes: model.layers.0.attn.g_proj.weight: "
                                         r"\(32, 48\), expected \(48, 32\)"):
        from_fla(wrong, config)
    # A tied model's checkpoint read with untied embeddings lacks the head.
    untied = dict(_config("delta_net"), tie_word_embeddings=False)
    with pytest.raises(ValueError, match=r"missing tensors: lm_head.weight \(64, 32\)"):
        from_fla(_tensors("delta_net"), untied)


@pytest.mark.parametrize("name, field, value, match", [
    ("delta_net", "qk_norm", "sum", r"config\['qk_norm'\]='sum' is not supported"),
    ("delta_net", "use_beta", False, r"config\['use_beta'\]=False is not supported"),
    ("delta_net", "qk_activation", "relu", r"config\['qk_activation'\]='relu'"),
    ("delta_net", "attn", {"layers": [1], "num_heads": 2},
     r"config\['attn'\]=.* hybrid attention layers are not converted"),
    ("gated_deltanet", "hidden_act", "powlu", r"config\['hidden_act'\]='powlu'"),
    ("gated_deltanet", "output_gate_activation", "sigmoid",
     r"config\['output_gate_activation'\]='sigmoid' is not supported"),
    ("gated_deltanet", "num_v_heads", 3, r"config\['num_v_heads'\]=3 is not supported"),
    ("gated_deltanet", "model_type", "kda", r"config\['model_type'\] must be one of"),
    ("gated_deltaproduct", "attnres_block_size", 2, r"config\['attnres_block_size'\]=2"),
    ("gated_deltaproduct", "hidden_size", None, r"config\['hidden_size'\] is missing"),
])
def test_fla_options_deltajax_cannot_express_are_named(name, field, value, match):
    with pytest.raises(ValueError, match=match):
        from_fla(_dir(name), dict(_config(name), **{field: value}))


def test_fields_fla_does_not_read_or_that_keep_its_math_are_accepted():
    # FLA's DeltaNet layer ignores use_output_norm; other model types' fields and the fused
    # kernels' switches do not change what FLA computes.
    for name, extra in (("delta_net", dict(use_output_norm=False, fuse_norm=False)),
                        ("gated_deltanet", dict(qk_norm="sum", fuse_swiglu=True,
                                                attn_mode="fused_recurrent"))):
        config, _ = from_fla(_tensors(name), dict(_config(name), **extra))
        assert config == from_fla(_dir(name))[0]


def test_bad_checkpoint_arguments_are_named(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="config is None and checkpoint is not a directory"):
        from_fla(_tensors("delta_net"))
    with pytest.raises(ValueError, match="does not exist"):
        from_fla(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="has none of"):
        from_fla(tmp_path)
    with pytest.raises(ValueError, match="checkpoint must be a mapping of tensors or a path"):
        from_fla(3, _config("delta_net"))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(ImportError, match="from_fla needs PyTorch to read the torch state dict"):
        from_fla(tmp_path, _config("delta_net"))
