"""LanguageModel: embedding, pre-norm blocks of (mixer, optional MLP), final norm, head.

ModelConfig.norm = None drops every norm (Nanda et al.'s grokking transformer has none)."""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deltajax.layers import ReluMLP, SwiGLU
from deltajax.models.config import ModelConfig
from deltajax.models.mixers import build_mixer
from deltajax.ops import checks


def _norm(config: ModelConfig):
    """The configured norm module (named by the attribute it is set to in setup), or the
    identity when config.norm is None."""
    if config.norm is None:
        return lambda x: x
    return nn.RMSNorm(epsilon=config.norm_eps, dtype=config.jnp_dtype)


_MLPS = {"swiglu": SwiGLU, "relu": ReluMLP}


def check_tokens(tokens, vocab_size: int, name: str) -> Optional[jax.Array]:
    """Token ids must lie in [0, vocab_size): nn.Embed gives NaN above and wraps -1 silently.

    Concrete ids out of range raise a ValueError naming `name`; traced ones give the returned
    flag, which the caller turns into NaN (deltajax.ops.checks.poison).
    """
    if jnp.ndim(tokens) != 2:
        raise ValueError(f"{name} must have shape [batch, time], got {jnp.shape(tokens)}")
    if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
        raise ValueError(f"{name} must hold integer token ids, got dtype {jnp.result_type(tokens)}")
    values = checks.concrete(tokens)
    if values is None:
        return jnp.any((tokens < 0) | (tokens >= vocab_size))
    if values.size and (values.min() < 0 or values.max() >= vocab_size):
        bad = values.min() if values.min() < 0 else values.max()
        raise ValueError(f"{name} holds token id {int(bad)}, outside the vocabulary [0, "
                         f"{vocab_size}) of config.vocab_size={vocab_size}")
    return None


def _check_size(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Block(nn.Module):
    config: ModelConfig
    mixer_name: str

    def setup(self):
        c = self.config
        self.mixer_norm = _norm(c)
        self.mixer = build_mixer(c, self.mixer_name)
        if c.mlp:
            self.mlp_norm = _norm(c)
            self.mlp = _MLPS[c.mlp](c.mlp_dim, dtype=c.jnp_dtype)

    def _with_mlp(self, x_BTD):
        return x_BTD + self.mlp(self.mlp_norm(x_BTD)) if self.config.mlp else x_BTD

    def __call__(self, x_BTD):
        return self._with_mlp(x_BTD + self.mixer(self.mixer_norm(x_BTD)))

    def extend(self, x_BTD, cache):
        y_BTD, cache = self.mixer.extend(self.mixer_norm(x_BTD), cache)
        return self._with_mlp(x_BTD + y_BTD), cache


class LanguageModel(nn.Module):
    """tokens [B, T] -> float32 logits [B, T, vocab]. Decoding: init_cache, extend, decode_step.

    Token ids outside [0, vocab_size) raise a ValueError when concrete; traced (under jit, grad),
    they make the logits, the returned cache and every gradient NaN.
    """

    config: ModelConfig

    def setup(self):
        c = self.config
        self.embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=nn.initializers.normal(0.02),
                              dtype=c.jnp_dtype)
        self.blocks = [Block(c, name) for name in c.mixers]
        self.final_norm = _norm(c)
        if not c.tie_embeddings:
            self.head = nn.Dense(c.vocab_size, use_bias=False, dtype=c.jnp_dtype)

    def _logits(self, x_BTD):
        x_BTD = self.final_norm(x_BTD)
        logits = self.embed.attend(x_BTD) if self.config.tie_embeddings else self.head(x_BTD)
        return logits.astype(jnp.float32)

    def __call__(self, tokens_BT: jax.Array) -> jax.Array:
        invalid = check_tokens(tokens_BT, self.config.vocab_size, "tokens_BT")
        x_BTD = self.embed(tokens_BT)
        for block in self.blocks:
            x_BTD = block(x_BTD)
        return checks.poison(invalid, self._logits(x_BTD))

    def extend(self, tokens_BT: jax.Array, cache: tuple) -> tuple[jax.Array, tuple]:
        """Logits of tokens that continue the cached sequence, and the cache after them."""
        return self._extend(tokens_BT, cache, "tokens_BT")

    def _extend(self, tokens_BT, cache, name):
        invalid = check_tokens(tokens_BT, self.config.vocab_size, name)
        x_BTD = self.embed(tokens_BT)
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache, strict=True):
            x_BTD, layer_cache = block.extend(x_BTD, layer_cache)
            new_cache.append(layer_cache)
        # The cache too: a bad token's state would make later, valid steps silently wrong.
        return checks.poison(invalid, (self._logits(x_BTD), tuple(new_cache)))

    def decode_step(self, tokens_B: jax.Array, cache: tuple) -> tuple[jax.Array, tuple]:
        if jnp.ndim(tokens_B) != 1:
            raise ValueError(f"tokens_B must have shape [batch], got {jnp.shape(tokens_B)}")
        logits_B1V, cache = self._extend(tokens_B[:, None], cache, "tokens_B")
        return logits_B1V[:, 0], cache

    def init_cache(self, batch: int, max_len: int) -> tuple:
        """Per-layer caches of an empty sequence; needs no parameters (callable unbound)."""
        batch, max_len = _check_size(batch, "batch"), _check_size(max_len, "max_len")
        return tuple(build_mixer(self.config, name, parent=None).init_cache(batch, max_len)
                     for name in self.config.mixers)
