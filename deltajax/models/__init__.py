"""Language models over the mixers of deltajax.layers, with cached decoding."""

from deltajax.models.config import ModelConfig, hybrid
from deltajax.models.generate import count_params, generate
from deltajax.models.language_model import Block, LanguageModel
from deltajax.models.mixers import MIXERS, build_mixer

__all__ = ["Block", "LanguageModel", "MIXERS", "ModelConfig", "build_mixer", "count_params",
           "generate", "hybrid"]
