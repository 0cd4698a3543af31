"""The mixer table: a name in ModelConfig -> the layer, its arguments from the config, and the
ModelConfig option groups it reads. A new mixer is one file in deltajax/layers/ plus one line
here."""

from collections.abc import Callable
from typing import NamedTuple

from deltajax.layers import Attention, DeltaNet, DeltaProduct, GatedDeltaNet, LinearAttention, Mixer


class MixerEntry(NamedTuple):
    layer: Callable[..., Mixer]   # the layer class
    kwargs: Callable[..., dict]   # config -> the layer's arguments
    groups: tuple[str, ...]       # the option groups kwargs reads (a group no layer reads: error)
    head_shape: bool = False      # reads ModelConfig.head_dim, expand_v and num_v_heads


def _base(c):
    return dict(d_model=c.d_model, num_heads=c.num_heads, dtype=c.jnp_dtype)


def _conv(c):
    conv = c.options("conv")
    return dict(**_base(c), head_dim=c.head_dim, expand_v=c.expand_v, num_v_heads=c.num_v_heads,
                use_short_conv=conv.enabled, conv_size=conv.size, norm_eps=c.norm_eps)


def _delta(c):
    rule = c.options("delta_rule")
    kwargs = dict(**_conv(c), allow_neg_eigval=rule.allow_neg_eigval, backend=rule.backend,
                  chunk_size=rule.chunk_size)
    for gate in ("use_output_gate", "use_forget_gate"):  # None keeps the mixer's default
        if getattr(rule, gate) is not None:
            kwargs[gate] = getattr(rule, gate)
    return kwargs


def _delta_product(c):
    return dict(**_delta(c), num_householder=c.options("delta_product").num_householder)


def _linear(c):
    options = c.options("linear_attention")
    return dict(**_conv(c), chunk_size=options.chunk_size, feature_map=options.feature_map)


def _attention(c):
    options = c.options("attention")
    return dict(**_base(c), rope_theta=options.rope_theta, use_rope=options.rope,
                conv_size=options.conv_size)


def _swa(c):
    return dict(**_attention(c), window_size=c.options("attention").window_size)


_DELTA = ("conv", "delta_rule")
MIXERS = {
    "deltanet": MixerEntry(DeltaNet, _delta, _DELTA, True),
    "gated_deltanet": MixerEntry(GatedDeltaNet, _delta, _DELTA, True),
    "delta_product": MixerEntry(DeltaProduct, _delta_product, (*_DELTA, "delta_product"), True),
    "linear_attention": MixerEntry(LinearAttention, _linear, ("conv", "linear_attention"), True),
    "attention": MixerEntry(Attention, _attention, ("attention",)),
    "swa": MixerEntry(Attention, _swa, ("attention",)),
}


def build_mixer(config, name: str, **module_kwargs) -> Mixer:
    """The mixer module `name` configured by `config` (module_kwargs: name=, parent=)."""
    entry = MIXERS[name]
    return entry.layer(**entry.kwargs(config), **module_kwargs)
