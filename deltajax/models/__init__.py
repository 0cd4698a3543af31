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
from deltajax.models.from_fla import from_fla
from deltajax.models.generate import Generation, count_params, generate, sample_logits
from deltajax.models.language_model import Block, LanguageModel
from deltajax.models.mixers import MIXERS, MixerEntry, build_mixer

__all__ = ["AttentionOptions", "Block", "ConvOptions", "DeltaProductOptions", "DeltaRuleOptions",
           "Generation", "LanguageModel", "LinearAttentionOptions", "MIXERS", "MixerEntry",
           "ModelConfig", "build_mixer", "count_params", "from_fla", "generate", "hybrid",
           "sample_logits"]
