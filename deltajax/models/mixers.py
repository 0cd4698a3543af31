"""The mixer table: a name in ModelConfig -> the layer it builds. A new mixer is one file in
deltajax/layers/ plus one line here."""

from deltajax.layers import (Attention, DeltaNet, DeltaProduct, GatedDeltaNet, LinearAttention)


def _delta_kwargs(config):
    kwargs = dict(d_model=config.d_model, num_heads=config.num_heads,
                  use_short_conv=config.use_short_conv, conv_size=config.conv_size,
                  allow_neg_eigval=config.allow_neg_eigval, backend=config.backend,
                  chunk_size=config.chunk_size, norm_eps=config.norm_eps, dtype=config.jnp_dtype)
    if config.use_output_gate is not None:
        kwargs["use_output_gate"] = config.use_output_gate
    return kwargs


def _attention_kwargs(config):
    return dict(d_model=config.d_model, num_heads=config.num_heads, rope_theta=config.rope_theta,
                dtype=config.jnp_dtype)


MIXERS = {
    "deltanet": lambda c, **kw: DeltaNet(**_delta_kwargs(c), **kw),
    "gated_deltanet": lambda c, **kw: GatedDeltaNet(**_delta_kwargs(c), **kw),
    "delta_product": lambda c, **kw: DeltaProduct(**_delta_kwargs(c), num_householder=c.num_householder, **kw),
    "linear_attention": lambda c, **kw: LinearAttention(**_delta_kwargs(c), **kw),
    "attention": lambda c, **kw: Attention(**_attention_kwargs(c), **kw),
    "swa": lambda c, **kw: Attention(**_attention_kwargs(c), window_size=c.window_size, **kw),
}


def build_mixer(config, name: str, **module_kwargs):
    """The mixer module `name` configured by `config` (module_kwargs: name=, parent=)."""
    return MIXERS[name](config, **module_kwargs)
