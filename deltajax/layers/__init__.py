"""Flax linen sequence mixers and blocks. Every mixer is a `Mixer`: __call__(x) for whole
sequences, extend(x, cache) to continue a cached sequence (T = 1 decodes) and
init_cache(batch, max_len)."""

from deltajax.layers.attention import Attention
from deltajax.layers.conv import ShortConvolution
from deltajax.layers.delta_mixer import DeltaRuleMixer
from deltajax.layers.delta_net import DeltaNet
from deltajax.layers.delta_product import DeltaProduct
from deltajax.layers.gated_delta_net import GatedDeltaNet
from deltajax.layers.linear_attention import LinearAttention
from deltajax.layers.mixer import Mixer
from deltajax.layers.mlp import ReluMLP, SwiGLU

__all__ = ["Attention", "DeltaNet", "DeltaProduct", "DeltaRuleMixer", "GatedDeltaNet",
           "LinearAttention", "Mixer", "ReluMLP", "ShortConvolution", "SwiGLU"]
