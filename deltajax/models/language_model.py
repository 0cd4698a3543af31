"""LanguageModel: embedding, pre-norm blocks of (mixer, optional MLP), final norm, head.

ModelConfig.norm = None drops every norm (Nanda et al.'s grokking transformer has none);
ModelConfig.remat recomputes each block in the backward pass, ModelConfig.scan_layers runs the
blocks as one nn.scan (parameters stacked on a leading layer axis), and ModelConfig.init="fla"
draws the parameters as flash-linear-attention does (fla_init)."""

import functools
from collections.abc import Mapping
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deltajax.layers import ReluMLP, SwiGLU
from deltajax.models.config import REMAT_POLICIES, ModelConfig
from deltajax.models.mixers import build_mixer
from deltajax.ops import checks
from deltajax.ops.attention import check_cache_positions
from deltajax.ops.segments import check_segment_ids, segment_positions


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

    def __call__(self, x_BTD, segment_ids_BT=None):
        return self._with_mlp(x_BTD + self.mixer(self.mixer_norm(x_BTD), segment_ids_BT))

    def extend(self, x_BTD, cache):
        y_BTD, cache = self.mixer.extend(self.mixer_norm(x_BTD), cache)
        return self._with_mlp(x_BTD + y_BTD), cache


class _ScanBlock(Block):
    """A Block with nn.scan's signatures: the residual stream is the carry; the per-layer cache
    (extend) and the segment ids (copied per layer, see LanguageModel) are scanned in."""

    def __call__(self, x_BTD, segment_ids_LBT):
        return super().__call__(x_BTD, segment_ids_LBT), None


def _blocks(c: ModelConfig):
    """The blocks: a list of Blocks, or with c.scan_layers one nn.scan of them ("blocks")."""
    block = _ScanBlock if c.scan_layers else Block
    if c.remat:
        # Inside scan, CSE cannot undo the recomputation, so its prevention is not needed.
        block = nn.remat(block, policy=REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers)
    if not c.scan_layers:
        return [block(c, name) for name in c.mixers]
    return nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                   length=c.num_layers, methods=["__call__", "extend"])(c, c.mixers[0])


@functools.partial(jax.jit, static_argnames="std")  # one compile, not one per leaf shape
def fla_init(params, key: jax.Array, std: float = 0.02):
    """params redrawn as flash-linear-attention's _init_weights draws them: N(0, std) on every
    linear and convolution kernel and embedding (its initializer_range, 0.02), A_log = log U(0,
    16) as its layers do; norms (ones), biases (zeros) and dt_bias keep their Flax draw, which
    is FLA's too."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)

    def redraw(path, leaf, key):
        name = str(getattr(path[-1], "key", path[-1]))
        if name in ("kernel", "embedding"):
            return std * jax.random.normal(key, leaf.shape, leaf.dtype)
        if name == "A_log":  # tiny, not 0: log(0) would make the decay rate infinite
            tiny = jnp.finfo(leaf.dtype).tiny
            return jnp.log(jax.random.uniform(key, leaf.shape, leaf.dtype, tiny, 16.0))
        return leaf

    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([redraw(path, leaf, k)
                              for (path, leaf), k in zip(leaves, keys, strict=True)])


class LanguageModel(nn.Module):
    """tokens [B, T] -> float32 logits [B, T, vocab]. Decoding: init_cache, extend, decode_step.

    Token ids outside [0, vocab_size) raise a ValueError when concrete; traced (under jit, grad),
    they make the logits, the returned cache and every gradient NaN. The cache is a tuple of
    per-layer caches, or with scan_layers one cache whose arrays are stacked on a layer axis.
    """

    config: ModelConfig

    def setup(self):
        c = self.config
        embedding_init = nn.initializers.normal(c.embed_init_std)
        self.embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=embedding_init,
                              dtype=c.jnp_dtype)
        if c.position_embedding is not None:
            self.pos_embed = nn.Embed(c.position_embedding, c.d_model,
                                      embedding_init=embedding_init, dtype=c.jnp_dtype)
        self.blocks = _blocks(c)
        self.final_norm = _norm(c)
        if not c.tie_embeddings:
            self.head = nn.Dense(c.vocab_size, use_bias=False, dtype=c.jnp_dtype)

    def _logits(self, x_BTD):
        x_BTD = self.final_norm(x_BTD)
        logits = self.embed.attend(x_BTD) if self.config.tie_embeddings else self.head(x_BTD)
        return logits.astype(jnp.float32)

    def __call__(self, tokens_BT: jax.Array, segment_ids_BT: Optional[jax.Array] = None
                 ) -> jax.Array:
        """segment_ids_BT: [B, T] integers, non-decreasing along time, for packed sequences:
        every segment's logits are those of the segment alone (attention masked to the segment,
        RoPE positions from its start, convolutions and states reset at its start)."""
        invalid = check_tokens(tokens_BT, self.config.vocab_size, "tokens_BT")
        if segment_ids_BT is not None:
            invalid = checks.any_invalid([invalid, check_segment_ids(
                segment_ids_BT, tokens_BT.shape, "segment_ids_BT")])
        x_BTD = self._embed_positions(self.embed(tokens_BT), segment_ids_BT)
        if self.config.scan_layers:
            # One in_axes serves both of nn.scan's methods and extend scans its cache, so the
            # ids go in scanned too, one copy per layer.
            per_layer = None if segment_ids_BT is None else jnp.broadcast_to(
                segment_ids_BT, (self.config.num_layers, *segment_ids_BT.shape))
            x_BTD, _ = self.blocks(x_BTD, per_layer)
        else:
            for block in self.blocks:
                x_BTD = block(x_BTD, segment_ids_BT)
        return checks.poison(invalid, self._logits(x_BTD))

    def _embed_positions(self, x_BTD, segment_ids_BT):
        """x_BTD plus the learned position embeddings (counted from each segment's start)."""
        limit = self.config.position_embedding
        if limit is None:
            return x_BTD
        T = x_BTD.shape[1]
        if T > limit:
            raise ValueError(f"tokens_BT has {T} positions but ModelConfig.position_embedding="
                             f"{limit} learned ones")
        positions_BT = (jnp.arange(T)[None] if segment_ids_BT is None
                        else segment_positions(segment_ids_BT))
        return x_BTD + self.pos_embed(positions_BT)

    @nn.nowrap
    def init(self, rngs, *args, **kwargs):
        """Flax's init; with config.init == "fla" the parameters then redrawn by fla_init."""
        variables = super().init(rngs, *args, **kwargs)
        if self.config.init != "fla" or "params" not in variables:
            return variables
        key = jax.random.fold_in(rngs["params"] if isinstance(rngs, Mapping) else rngs, 1)
        return {**variables, "params": fla_init(variables["params"], key)}

    def extend(self, tokens_BT: jax.Array, cache: tuple) -> tuple[jax.Array, tuple]:
        """Logits of tokens that continue the cached sequence, and the cache after them."""
        return self._extend(tokens_BT, cache, "tokens_BT")

    def _extend(self, tokens_BT, cache, name):
        if self.config.position_embedding is not None:
            # The per-layer caches hold no position to look the embedding up at.
            raise ValueError("decoding (extend, decode_step, generate) is not built for learned "
                             "positions: ModelConfig.position_embedding must be None")
        invalid = check_tokens(tokens_BT, self.config.vocab_size, name)
        x_BTD = self.embed(tokens_BT)
        if self.config.scan_layers:
            if self.config.mixers[0] == "attention":
                # Inside nn.scan every position is traced (NaN, not an error): check the
                # layers' shared position here, where it is still concrete.
                check_cache_positions(cache["pos"][0], tokens_BT.shape[1], cache["k"].shape[2])
            x_BTD, new_cache = self.blocks.extend(x_BTD, cache)
        else:
            new_cache = []
            for block, layer_cache in zip(self.blocks, cache, strict=True):
                x_BTD, layer_cache = block.extend(x_BTD, layer_cache)
                new_cache.append(layer_cache)
            new_cache = tuple(new_cache)
        # The cache too: a bad token's state would make later, valid steps silently wrong.
        return checks.poison(invalid, (self._logits(x_BTD), new_cache))

    def decode_step(self, tokens_B: jax.Array, cache: tuple) -> tuple[jax.Array, tuple]:
        if jnp.ndim(tokens_B) != 1:
            raise ValueError(f"tokens_B must have shape [batch], got {jnp.shape(tokens_B)}")
        logits_B1V, cache = self._extend(tokens_B[:, None], cache, "tokens_B")
        return logits_B1V[:, 0], cache

    def init_cache(self, batch: int, max_len: int) -> tuple:
        """Per-layer caches of an empty sequence; needs no parameters (callable unbound)."""
        batch, max_len = _check_size(batch, "batch"), _check_size(max_len, "max_len")
        caches = tuple(build_mixer(self.config, name, parent=None).init_cache(batch, max_len)
                       for name in self.config.mixers)
        if self.config.scan_layers:
            return jax.tree.map(lambda *layers: jnp.stack(layers), *caches)
        return caches
