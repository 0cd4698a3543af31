"""from_fla: a flash-linear-attention (FLA) DeltaNet, Gated DeltaNet or Gated DeltaProduct
checkpoint as a deltajax ModelConfig and LanguageModel params that compute the same logits.

FLA's config fields map to ModelConfig; an FLA option deltajax cannot express raises a
ValueError naming the field, never a silently different model. Tensor names and layouts:
torch Linear weights [out, in] become Dense kernels [in, out], depthwise Conv1d weights
[D, 1, K] ShortConvolution kernels [K, D]; every tensor must be used and every parameter
filled, with the shape the config implies."""

import functools
import json
import math
import os
from collections.abc import Mapping
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from deltajax.models.config import ModelConfig
from deltajax.models.language_model import LanguageModel

_MODEL_TYPES = {"delta_net": "deltanet", "gated_deltanet": "gated_deltanet",
                "gated_deltaproduct": "delta_product"}
# FLA 0.6.0's defaults (fla/models/*/configuration_*.py) for the fields that change the model.
_DEFAULTS = {
    "common": dict(conv_size=4, use_short_conv=True, allow_neg_eigval=False, hidden_ratio=4,
                   intermediate_size=None, hidden_act="swish", norm_eps=1e-6,
                   tie_word_embeddings=False, attn=None, attnres_block_size=None),
    # use_output_norm is not listed: FLA's DeltaNet layer ignores it (o_norm is always there).
    "delta_net": dict(expand_k=1.0, expand_v=1.0, use_gate=False, use_beta=True,
                      qk_norm="l2", qk_activation="silu"),
    "gated_deltanet": dict(head_dim=256, expand_v=2.0, num_v_heads=None, use_gate=True,
                           output_gate_activation="swish"),
    "gated_deltaproduct": dict(head_dim=256, expand_v=2.0, use_output_gate=True,
                               use_forget_gate=False, num_householder=1),
}
# The only values deltajax computes, per field; any other raises (what deltajax does instead).
_REQUIRED = {
    "attn": (None, "hybrid attention layers are not converted; every layer must be the "
                   "model's own mixer"),
    "attnres_block_size": (None, "attention residuals are not implemented"),
    "hidden_act": ("swish", "the MLP is SwiGLU (silu)"),
    "use_beta": (True, "beta is always sigmoid(b_proj(x))"),
    "qk_norm": ("l2", "q and k are L2-normalised"),
    "qk_activation": ("silu", "q and k pass through SiLU"),
}
_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "pytorch_model.bin.index.json")


def _whole(value: float, name: str) -> int:
    if not math.isclose(value, round(value)) or round(value) < 1:
        raise ValueError(f"{name} gives a width of {value}, not a positive whole number")
    return round(value)


def fla_model_config(config: Mapping) -> ModelConfig:
    """FLA's model config (config.json's contents) as a ModelConfig; ValueError naming the
    field (config['...']) that is missing or that deltajax cannot express."""
    if hasattr(config, "to_dict"):  # a transformers PretrainedConfig
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be FLA's config as a dict, got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"config['model_type'] must be one of {sorted(_MODEL_TYPES)}, "
                         f"got {model_type!r}")
    for name in _SIZES:
        if config.get(name) is None:
            raise ValueError(f"config[{name!r}] is missing ({model_type} needs it)")
    defaults = {**_DEFAULTS["common"], **_DEFAULTS[model_type]}
    c = {**defaults, **config}
    for name, (value, why) in _REQUIRED.items():
        if name in defaults and c[name] != value:  # other model types' fields: FLA ignores them
            raise ValueError(f"config[{name!r}]={c[name]!r} is not supported: {why} "
                             f"(only {value!r} is)")
    hidden, heads = c["hidden_size"], c["num_heads"]
    if model_type == "delta_net":
        key_dim = _whole(hidden * c["expand_k"], "config['expand_k'] * config['hidden_size']")
        value_dim = _whole(hidden * c["expand_v"], "config['expand_v'] * config['hidden_size']")
        if key_dim % heads or value_dim % heads:
            raise ValueError(f"config['num_heads']={heads} must divide the key and value "
                             f"widths {key_dim} and {value_dim}")
        head_dim, head_v_dim, num_v_heads = key_dim // heads, value_dim // heads, None
        gates = dict(use_output_gate=c["use_gate"])
    else:
        head_dim = c["head_dim"]
        head_v_dim = _whole(head_dim * c["expand_v"], "config['expand_v'] * config['head_dim']")
        if model_type == "gated_deltanet":
            if c["output_gate_activation"] not in ("swish", "silu"):
                raise ValueError(f"config['output_gate_activation']="
                                 f"{c['output_gate_activation']!r} is not supported: the "
                                 f"output gate is silu (FLA's 'swish')")
            gates = dict(use_output_gate=c["use_gate"])
        else:
            gates = dict(use_output_gate=c["use_output_gate"],
                         use_forget_gate=c["use_forget_gate"])
        # FLA's Gated DeltaProduct model does not pass num_v_heads to its layers.
        num_v_heads = c["num_v_heads"] if model_type == "gated_deltanet" else None
        if num_v_heads is not None and (num_v_heads < heads or num_v_heads % heads):
            raise ValueError(f"config['num_v_heads']={num_v_heads} is not supported: it must "
                             f"be a multiple of config['num_heads']={heads}")
    expand_v = head_v_dim / head_dim
    expand_v = int(expand_v) if expand_v.is_integer() else expand_v
    if head_dim * expand_v != head_v_dim:
        raise ValueError(f"the value head width {head_v_dim} is not a float multiple of the key "
                         f"head width {head_dim} that deltajax can hold (config['expand_v'])")
    intermediate = c["intermediate_size"]
    if intermediate is None:  # fla/modules/mlp.py GatedMLP
        ratio = c["hidden_ratio"] or 4
        intermediate = 256 * ((int(hidden * ratio * 2 / 3) + 255) // 256)
    kwargs = dict(
        vocab_size=c["vocab_size"], d_model=hidden, num_layers=c["num_hidden_layers"],
        num_heads=heads, mixer=_MODEL_TYPES[model_type], mlp="swiglu",
        mlp_hidden_dim=intermediate, norm="rmsnorm", tie_embeddings=c["tie_word_embeddings"],
        norm_eps=c["norm_eps"], head_dim=head_dim, expand_v=expand_v,
        num_v_heads=num_v_heads, conv=dict(enabled=c["use_short_conv"], size=c["conv_size"]),
        delta_rule=dict(allow_neg_eigval=c["allow_neg_eigval"], **gates))
    if model_type == "gated_deltaproduct":
        kwargs["delta_product"] = dict(num_householder=c["num_householder"])
    try:
        return ModelConfig(**kwargs)
    except ValueError as e:
        raise ValueError(f"config ({model_type}) does not make a valid ModelConfig: {e}") from e


def _fla_name(path: tuple[str, ...]) -> tuple[str, str]:
    """A deltajax parameter path -> (FLA's tensor name, layout: "linear", "conv" or "same")."""
    if path == ("embed", "embedding"):
        return "model.embeddings.weight", "same"
    if path == ("final_norm", "scale"):
        return "model.norm.weight", "same"
    if path == ("head", "kernel"):
        return "lm_head.weight", "linear"
    layer = f"model.layers.{path[0].removeprefix('blocks_')}"
    if path[1:] == ("mixer_norm", "scale"):
        return f"{layer}.attn_norm.weight", "same"
    if path[1:] == ("mlp_norm", "scale"):
        return f"{layer}.mlp_norm.weight", "same"
    if path[1] == "mlp":
        return f"{layer}.mlp.{path[2]}.weight", "linear"
    inner = path[2:]
    if inner[-1] in ("A_log", "dt_bias"):
        return f"{layer}.attn.{inner[-1]}", "same"
    if inner == ("o_norm", "scale"):
        return f"{layer}.attn.o_norm.weight", "same"
    if inner[0].endswith("_conv"):
        return f"{layer}.attn.{inner[0]}1d.weight", "conv"
    return f"{layer}.attn.{inner[0]}.weight", "linear"


def _to_deltajax(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "linear":  # torch Linear [out, in] -> Dense [in, out]
        return x.T
    if layout == "conv":    # depthwise Conv1d [D, 1, K] -> [K, D]
        return x[:, 0, :].T if x.ndim == 3 and x.shape[1] == 1 else x
    return x


def _fla_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    if layout == "linear":
        return shape[::-1]
    if layout == "conv":
        return (shape[1], 1, shape[0])
    return shape


@functools.lru_cache(maxsize=8)
def _param_shapes(config: ModelConfig) -> dict:
    """{path: shape} of LanguageModel(config)'s params, by jax.eval_shape (no compile)."""
    shapes = jax.eval_shape(LanguageModel(config).init, jax.random.PRNGKey(0),
                            jnp.zeros((1, 1), jnp.int32))["params"]
    return {tuple(k.key for k in path): leaf.shape
            for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)}


def _as_float32(name: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (bfloat16 has no numpy view: upcast first)
        value = value.detach().cpu().float().numpy()
    array = np.asarray(value)
    if array.dtype.kind in "biuc":  # ml_dtypes' bfloat16 (safetensors' BF16) is kind "V"
        raise ValueError(f"checkpoint[{name!r}] must hold real floats, got dtype {array.dtype}")
    return array.astype(np.float32)


def _read_safetensors(path: str) -> dict:
    try:
        from safetensors.numpy import load_file
    except ImportError as e:
        raise ImportError(f"from_fla needs the safetensors package to read {path}: "
                          f"pip install safetensors") from e
    # BF16 tensors load as ml_dtypes.bfloat16, which jax has registered with numpy.
    return load_file(path)


def _read_torch(path: str) -> dict:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"from_fla needs PyTorch to read the torch state dict {path}: "
                          f"pip install torch, or save the checkpoint as .safetensors") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def _read_file(path: str) -> dict:
    if path.endswith(".index.json"):  # sharded: {"weight_map": {name: shard file}}
        with open(path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(_read_file(os.path.join(os.path.dirname(path), shard)))
        return tensors
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    if path.endswith((".bin", ".pt", ".pth")):
        return _read_torch(path)
    raise ValueError(f"checkpoint {path} is not a .safetensors, .bin, .pt or .index.json file")


def load_fla_checkpoint(checkpoint) -> tuple[dict, Optional[dict]]:
    """checkpoint (a mapping name -> array, a weights file or an FLA / Hugging Face
    directory) -> (name -> float32 array, the directory's config.json or None)."""
    if isinstance(checkpoint, Mapping):
        return {k: _as_float32(k, v) for k, v in checkpoint.items()}, None
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise ValueError(f"checkpoint must be a mapping of tensors or a path, "
                         f"got {type(checkpoint).__name__}")
    path = os.fspath(checkpoint)
    if not os.path.exists(path):
        raise ValueError(f"checkpoint {path} does not exist")
    config = None
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "config.json")):
            with open(os.path.join(path, "config.json")) as f:
                config = json.load(f)
        found = [name for name in _WEIGHTS if os.path.exists(os.path.join(path, name))]
        if not found:
            raise ValueError(f"checkpoint directory {path} has none of {_WEIGHTS}")
        path = os.path.join(path, found[0])
    return {k: _as_float32(k, v) for k, v in _read_file(path).items()}, config


def from_fla(checkpoint: Union[Mapping, str, os.PathLike],
             config: Optional[Mapping] = None) -> tuple[ModelConfig, dict]:
    """An FLA DeltaNet / GatedDeltaNet / GatedDeltaProduct checkpoint -> (ModelConfig, params)
    for LanguageModel(model_config).apply({"params": params}, tokens).

    checkpoint: a mapping name -> array (numpy arrays or torch tensors), a .safetensors file,
    a torch state dict (.bin / .pt), a sharded index (.index.json), or a directory with
    config.json and model.safetensors or pytorch_model.bin (save_pretrained's layout).
    config: FLA's config as a dict (config.json's contents); read from the directory when None.
    """
    tensors, found_config = load_fla_checkpoint(checkpoint)
    if config is None:
        if found_config is None:
            raise ValueError("config is None and checkpoint is not a directory with a "
                             "config.json: pass FLA's config (config.json's contents) as config")
        config = found_config
    model_config = fla_model_config(config)
    params, used, missing, wrong = {}, set(), [], []
    for path, shape in _param_shapes(model_config).items():
        name, layout = _fla_name(path)
        if name not in tensors:
            missing.append(f"{name} {_fla_shape(shape, layout)}")
            continue
        used.add(name)
        value = _to_deltajax(tensors[name], layout)
        if value.shape != shape:
            wrong.append(f"{name}: {tensors[name].shape}, expected {_fla_shape(shape, layout)}")
            continue
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jnp.asarray(value)
    if model_config.tie_embeddings and "lm_head.weight" in tensors and not missing:
        # A torch state_dict of a tied model lists the shared tensor under both names.
        if not np.array_equal(tensors["lm_head.weight"], tensors["model.embeddings.weight"]):
            raise ValueError("checkpoint['lm_head.weight'] differs from "
                             "checkpoint['model.embeddings.weight'] but "
                             "config['tie_word_embeddings'] is true")
        used.add("lm_head.weight")
    unused = sorted(set(tensors) - used)
    problems = [f"missing tensors: {', '.join(missing)}" if missing else "",
                f"unused tensors: {', '.join(unused)}" if unused else "",
                f"wrong shapes: {'; '.join(wrong)}" if wrong else ""]
    if any(problems):
        raise ValueError(f"checkpoint does not match the {config['model_type']} model its "
                         f"config describes: " + "; ".join(p for p in problems if p))
    return model_config, params
