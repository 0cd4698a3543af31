"""ModelConfig: the whole model in one frozen dataclass, validated when it is made.

Options that only some mixers read live in typed groups (ConvOptions, DeltaRuleOptions, ...).
A group defaults to None, "the mixers' defaults"; a model carries only the groups its layers
use, and a group set for a model none of whose layers reads it is an error, not ignored.
Each group also accepts a plain dict, so `ModelConfig(**config.model.to_dict())` builds a model
from an ml_collections config whose `model` holds nested dicts.
"""

import dataclasses
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp

from deltajax.layers.linear_attention import FEATURE_MAPS
from deltajax.models.mixers import MIXERS
from deltajax.ops import Backend, check_chunk_size, parse_backend

_DTYPES = ("float32", "bfloat16")
MLPS = ("swiglu", "relu")   # relu: Dense + bias, ReLU, Dense + bias (the grokking models)
NORMS = ("rmsnorm",)
# "lecun": Flax's defaults (lecun_normal linears, the convolutions' torch-like uniform); "fla":
# flash-linear-attention's _init_weights, N(0, 0.02) on every linear, convolution and embedding.
INITS = ("lecun", "fla")
# ModelConfig.remat -> what a block's backward keeps from its forward (the rest is recomputed).
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,        # only the block's input
    "dots": jax.checkpoint_policies.checkpoint_dots,          # every matmul's output
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # weight matmuls
}


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_bool(value, name: str) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ConvOptions:
    """The short causal convolutions on q, k and v (enabled=False: SiLU alone)."""

    enabled: bool = True
    size: int = 4

    def __post_init__(self):
        _check_bool(self.enabled, "ModelConfig.conv.enabled")
        _check_positive_int(self.size, "ModelConfig.conv.size")


@dataclasses.dataclass(frozen=True)
class DeltaRuleOptions:
    """The delta-rule mixers' options; backend and chunk_size go to deltajax.ops.delta_rule."""

    allow_neg_eigval: bool = False         # beta in [0, 2] instead of [0, 1]
    use_output_gate: Optional[bool] = None  # None: the mixer's published default
    # The Mamba-style decay g = -exp(A_log) softplus(a_proj(x) + dt_bias) (FLA's Gated
    # DeltaNet / Gated DeltaProduct); None: the mixer's default (on for gated_deltanet only).
    use_forget_gate: Optional[bool] = None
    backend: Union[Backend, str] = "auto"  # stored as a Backend (a str: "auto" == Backend.AUTO)
    chunk_size: int = 64

    def __post_init__(self):
        _check_bool(self.allow_neg_eigval, "ModelConfig.delta_rule.allow_neg_eigval")
        for name in ("use_output_gate", "use_forget_gate"):
            if getattr(self, name) is not None:
                _check_bool(getattr(self, name), f"ModelConfig.delta_rule.{name}")
        backend = parse_backend(self.backend, "ModelConfig.delta_rule.backend")
        object.__setattr__(self, "backend", backend)
        check_chunk_size(self.chunk_size, "ModelConfig.delta_rule.chunk_size")


@dataclasses.dataclass(frozen=True)
class DeltaProductOptions:
    num_householder: int = 2               # n_h delta-rule steps per token

    def __post_init__(self):
        _check_positive_int(self.num_householder, "ModelConfig.delta_product.num_householder")


@dataclasses.dataclass(frozen=True)
class LinearAttentionOptions:
    """Linear attention has one path, so no backend: a backend meant for it is an error."""

    chunk_size: int = 64
    feature_map: str = "l2_norm"  # on q and k: "l2_norm" (DeltaNet's) or "elu_plus_one"

    def __post_init__(self):
        check_chunk_size(self.chunk_size, "ModelConfig.linear_attention.chunk_size")
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(f"ModelConfig.linear_attention.feature_map must be one of "
                             f"{sorted(FEATURE_MAPS)}, got {self.feature_map!r}")


@dataclasses.dataclass(frozen=True)
class AttentionOptions:
    window_size: int = 64                  # "swa": the tokens each position attends to
    rope_theta: float = 10000.0
    # False: no rotary embedding; with ModelConfig.position_embedding the learned absolute
    # positions of the original transformer (Nanda's and Power's grokking models) stand in.
    rope: bool = True
    # None: plain attention. A size: q, k and v first pass through the DeltaNet family's short
    # causal convolutions (with SiLU), as in Zoology's newer MQAR attention configs.
    conv_size: Optional[int] = None

    def __post_init__(self):
        _check_positive_int(self.window_size, "ModelConfig.attention.window_size")
        _check_bool(self.rope, "ModelConfig.attention.rope")
        if self.conv_size is not None:
            _check_positive_int(self.conv_size, "ModelConfig.attention.conv_size")
        if (isinstance(self.rope_theta, bool) or not isinstance(self.rope_theta, (int, float))
                or self.rope_theta <= 0):
            raise ValueError(f"ModelConfig.attention.rope_theta must be a positive number, "
                             f"got {self.rope_theta!r}")


OPTION_GROUPS = {"conv": ConvOptions, "delta_rule": DeltaRuleOptions,
                 "delta_product": DeltaProductOptions, "linear_attention": LinearAttentionOptions,
                 "attention": AttentionOptions}


def _as_group(name: str, value):
    """value (None, the group's dataclass or a dict of its fields) as the group `name`."""
    cls = OPTION_GROUPS[name]
    if value is None or isinstance(value, cls):
        return value
    if hasattr(value, "to_dict"):  # an ml_collections.ConfigDict
        value = value.to_dict()
    if not isinstance(value, dict):
        raise ValueError(f"ModelConfig.{name} must be a {cls.__name__}, a dict or None, "
                         f"got {value!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            raise ValueError(f"ModelConfig.{name}.{key} is not an option; "
                             f"choose from {sorted(fields)}")
    return cls(**value)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    d_model: int = 256
    num_layers: int = 2
    num_heads: int = 4
    mixer: str = "deltanet"                       # every layer's mixer, unless layer_mixers
    layer_mixers: Optional[tuple[str, ...]] = None  # one name per layer (hybrids); see hybrid()
    mlp: Optional[str] = "swiglu"                 # one of MLPS, or None (no MLP, as in MQAR models)
    mlp_hidden_dim: Optional[int] = None          # default: 8/3 d_model rounded up to 32
    norm: Optional[str] = "rmsnorm"               # pre-norms and final norm; None: none (Nanda)
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    dtype: str = "float32"                        # compute dtype; parameters stay float32
    # The heads of the DeltaNet family (every mixer but attention and swa, which keep
    # d_model // num_heads), as FLA's head_dim, expand_v and num_v_heads: key head dim (None:
    # d_model // num_heads), value head dim = expand_v * head_dim, and grouped value heads
    # (None: num_heads; else a multiple of it, num_v_heads // num_heads value heads per q/k head).
    head_dim: Optional[int] = None
    expand_v: float = 1
    num_v_heads: Optional[int] = None
    init: str = "lecun"                           # one of INITS
    # Learned absolute positions added to the token embeddings, for sequences up to this many
    # tokens (None: none; attention then has RoPE unless attention.rope is False).
    position_embedding: Optional[int] = None
    # The token (and position) embeddings' N(0, std) draw: 0.02 as GPT-2 and FLA; Nanda's
    # grokking model draws 1 / sqrt(d_model).
    embed_init_std: float = 0.02
    remat: Optional[str] = None                   # a REMAT_POLICIES name: recompute in backward
    scan_layers: bool = False                     # nn.scan over the blocks (one mixer for all)
    # Option groups (None: the mixers' defaults), each read by the mixers named after it.
    conv: Optional[ConvOptions] = None  # deltanet, gated_deltanet, delta_product, linear_attention
    delta_rule: Optional[DeltaRuleOptions] = None  # deltanet, gated_deltanet, delta_product
    delta_product: Optional[DeltaProductOptions] = None  # delta_product
    linear_attention: Optional[LinearAttentionOptions] = None  # linear_attention
    attention: Optional[AttentionOptions] = None  # attention, swa

    def __post_init__(self):
        if isinstance(self.layer_mixers, list):
            object.__setattr__(self, "layer_mixers", tuple(self.layer_mixers))
        for name in ("vocab_size", "d_model", "num_layers", "num_heads"):
            _check_positive_int(getattr(self, name), f"ModelConfig.{name}")
        for name in self.mixers:
            if name not in MIXERS:
                raise ValueError(f"ModelConfig mixer {name!r} is unknown; "
                                 f"choose from {sorted(MIXERS)}")
        self._check_heads()
        if len(self.mixers) != self.num_layers:
            raise ValueError(f"ModelConfig.layer_mixers has {len(self.mixers)} names for "
                             f"num_layers={self.num_layers}")
        if self.mlp is not None and self.mlp not in MLPS:
            raise ValueError(f"ModelConfig.mlp must be one of {MLPS} or None, got {self.mlp!r}")
        if self.mlp_hidden_dim is not None:
            _check_positive_int(self.mlp_hidden_dim, "ModelConfig.mlp_hidden_dim")
        if self.norm is not None and self.norm not in NORMS:
            raise ValueError(f"ModelConfig.norm must be one of {NORMS} or None, got {self.norm!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"ModelConfig.dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.init not in INITS:
            raise ValueError(f"ModelConfig.init must be one of {INITS}, got {self.init!r}")
        if self.remat is not None and self.remat not in REMAT_POLICIES:
            raise ValueError(f"ModelConfig.remat must be one of {tuple(REMAT_POLICIES)} or None, "
                             f"got {self.remat!r}")
        _check_bool(self.scan_layers, "ModelConfig.scan_layers")
        if self.position_embedding is not None:
            _check_positive_int(self.position_embedding, "ModelConfig.position_embedding")
        if (isinstance(self.embed_init_std, bool)
                or not isinstance(self.embed_init_std, (int, float)) or self.embed_init_std <= 0):
            raise ValueError(f"ModelConfig.embed_init_std must be a positive number, "
                             f"got {self.embed_init_std!r}")
        if self.scan_layers and len(set(self.mixers)) > 1:
            raise ValueError(f"ModelConfig.scan_layers needs one mixer in every layer (nn.scan "
                             f"repeats one block), got layer_mixers={self.layer_mixers}")
        for group in OPTION_GROUPS:
            object.__setattr__(self, group, _as_group(group, getattr(self, group)))
            users = [name for name, entry in MIXERS.items() if group in entry.groups]
            if getattr(self, group) is not None and not set(users) & set(self.mixers):
                raise ValueError(f"ModelConfig.{group} is set but no layer is a "
                                 f"{' or '.join(map(repr, users))} mixer")
        uses_rope = (any(name in ("attention", "swa") for name in self.mixers)
                     and self.options("attention").rope)
        if uses_rope and (self.d_model // self.num_heads) % 2:
            raise ValueError(f"attention mixers need an even head dim (RoPE), got "
                             f"d_model / num_heads = {self.d_model // self.num_heads}")

    def _check_heads(self):
        if self.head_dim is not None:
            _check_positive_int(self.head_dim, "ModelConfig.head_dim")
        if self.num_v_heads is not None:
            _check_positive_int(self.num_v_heads, "ModelConfig.num_v_heads")
            if self.num_v_heads % self.num_heads:
                raise ValueError(f"ModelConfig.num_v_heads={self.num_v_heads} must be a multiple "
                                 f"of num_heads={self.num_heads}")
        if (isinstance(self.expand_v, bool) or not isinstance(self.expand_v, (int, float))
                or self.expand_v <= 0):
            raise ValueError(f"ModelConfig.expand_v must be a positive number, "
                             f"got {self.expand_v!r}")
        family = [name for name in self.mixers if MIXERS[name].head_shape]
        if family and self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(f"ModelConfig.num_heads={self.num_heads} must divide "
                             f"d_model={self.d_model} (or set ModelConfig.head_dim)")
        if len(family) < len(self.mixers) and self.d_model % self.num_heads:
            raise ValueError(f"ModelConfig.num_heads={self.num_heads} must divide "
                             f"d_model={self.d_model} (attention heads are d_model // num_heads)")
        head_dim = self.head_dim or self.d_model // self.num_heads
        if family and (head_dim * self.expand_v) % 1:
            raise ValueError(f"ModelConfig.expand_v={self.expand_v} times the head dim "
                             f"{head_dim} must be a whole number")
        for name, unset in (("head_dim", None), ("expand_v", 1), ("num_v_heads", None)):
            if not family and getattr(self, name) != unset:
                users = [mixer for mixer, entry in MIXERS.items() if entry.head_shape]
                raise ValueError(f"ModelConfig.{name} is set but no layer is a "
                                 f"{' or '.join(map(repr, users))} mixer")

    @property
    def mixers(self) -> tuple[str, ...]:
        return self.layer_mixers or (self.mixer,) * self.num_layers

    def options(self, group: str) -> Any:
        """The option group `group` with the defaults filled in (what the mixer builders read)."""
        return getattr(self, group) or OPTION_GROUPS[group]()

    def to_dict(self) -> dict:
        """Plain fields, groups as dicts, backend as its string: ModelConfig(**c.to_dict()) == c."""
        fields = dataclasses.asdict(self)
        if fields["delta_rule"] is not None:
            fields["delta_rule"]["backend"] = self.delta_rule.backend.value
        return fields

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def mlp_dim(self) -> int:
        return self.mlp_hidden_dim or -(-8 * self.d_model // 3 // 32) * 32


def hybrid(base: str, other: str, every: int, num_layers: int) -> tuple[str, ...]:
    """Layer mixers with `other` as every `every`-th layer, e.g. hybrid("deltanet", "swa", 2, 4)
    = ("deltanet", "swa", "deltanet", "swa")."""
    return tuple(other if (i + 1) % every == 0 else base for i in range(num_layers))
