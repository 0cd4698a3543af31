"""Language models over the mixers of deltajax.layers, with cached decoding."""

from deltajax.models.config import (
    AttentionOptions,
    ConvOptions,
    DeltaProductOptions,
    DeltaRuleOptions,
    LinearAttentionOptions,
    ModelConfig,
    hybrid,
)
from deltajax.models.generate import count_params, generate
from deltajax.models.language_model import Block, LanguageModel
from deltajax.models.mixers import MIXERS, MixerEntry, build_mixer

__all__ = ["AttentionOptions", "Block", "ConvOptions", "DeltaProductOptions", "DeltaRuleOptions",
           "LanguageModel", "LinearAttentionOptions", "MIXERS", "MixerEntry", "ModelConfig",
           "build_mixer", "count_params", "generate", "hybrid"]
