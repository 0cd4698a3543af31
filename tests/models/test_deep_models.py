"""Deep-model options: ModelConfig.remat (recompute blocks in the backward pass) and
ModelConfig.scan_layers (nn.scan over identical blocks) compute the unrolled model's loss,
gradients and decoding."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.models import LanguageModel, ModelConfig
from deltajax.models.config import REMAT_POLICIES
from tests.numerics import relative_error

VOCAB, B, T, LAYERS = 32, 2, 6, 2
# The recurrent backend and no MLP: the smallest graph to compile, three models at once.
UNROLLED = ModelConfig(vocab_size=VOCAB, d_model=16, num_heads=2, num_layers=LAYERS, mlp=None,
                       mixer="deltanet", delta_rule=dict(backend="recurrent"))
# Remat changes no value, so scan with remat checks scan too (one compile fewer).
VARIANTS = {"remat_full": dict(remat="full"),
            "scan_remat_dots": dict(scan_layers=True, remat="dots_no_batch")}
TOKENS = jax.random.randint(jax.random.PRNGKey(0), (B, T), 0, VOCAB)
PROMPT = 3


def stack_blocks(params):
    """Unrolled parameters (blocks_0, blocks_1, ...) -> scan_layers' (blocks, stacked)."""
    blocks = [params[f"blocks_{i}"] for i in range(LAYERS)]
    rest = {k: v for k, v in params.items() if not k.startswith("blocks_")}
    return {**rest, "blocks": jax.tree.map(lambda *layers: jnp.stack(layers), *blocks)}


def _loss(model, params):
    logits = model.apply({"params": params}, TOKENS)
    targets = jnp.roll(TOKENS, -1, axis=1)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))


def _decode(model, params):
    """Logits of TOKENS from a prefill of PROMPT tokens, then one decode step per token."""
    params = {"params": params}
    prompt, cache = model.apply(params, TOKENS[:, :PROMPT], model.init_cache(B, T),
                                method=model.extend)
    steps = []
    for t in range(PROMPT, T):
        step, cache = model.apply(params, TOKENS[:, t], cache, method=model.decode_step)
        steps.append(step)
    return jnp.concatenate([prompt, jnp.stack(steps, 1)], 1)


@functools.cache
def results():
    """{name: (loss, grads)} for the unrolled model and every variant, from the same
    parameters (stacked for scan), and the scanned model's logits and decoding: one compile."""
    configs = {"unrolled": UNROLLED, **{name: dataclasses.replace(UNROLLED, **options)
                                        for name, options in VARIANTS.items()}}

    @jax.jit
    def run(key):
        params = LanguageModel(UNROLLED).init(key, TOKENS)["params"]
        out = {}
        for name, config in configs.items():
            p = stack_blocks(params) if config.scan_layers else params
            out[name] = jax.value_and_grad(functools.partial(_loss, LanguageModel(config)))(p)
        scanned = LanguageModel(configs["scan_remat_dots"])
        out["scan_decoding"] = (scanned.apply({"params": stack_blocks(params)}, TOKENS),
                                _decode(scanned, stack_blocks(params)))
        return out
    return run(jax.random.PRNGKey(1))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_has_the_unrolled_loss_and_gradients(name):
    (loss, grads), (ref_loss, ref_grads) = results()[name], results()["unrolled"]
    if VARIANTS[name].get("scan_layers"):
        ref_grads = stack_blocks(ref_grads)
    assert relative_error(loss, ref_loss) < 1e-5
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
    flat = lambda tree: jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(tree)])
    assert relative_error(flat(grads), flat(ref_grads)) < 1e-5
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        ref = functools.reduce(lambda tree, key: tree[key.key], path, ref_grads)
        assert relative_error(grad, ref) < 1e-5, jax.tree_util.keystr(path)


def _top_level_eqns(**options):
    """The equations of the model's forward jaxpr (traced, not compiled)."""
    model = LanguageModel(dataclasses.replace(UNROLLED, **options))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), TOKENS)["params"]
    return jax.make_jaxpr(functools.partial(_loss, model))(params).jaxpr.eqns


def _remats(eqns):  # jax.checkpoint's equations, whatever the primitive's name in this JAX
    return [e for e in eqns if {"policy", "prevent_cse"} <= set(e.params)]


def _layer_scans(eqns):
    return [e for e in eqns if e.primitive.name == "scan" and e.params["length"] == LAYERS]


def test_remat_checkpoints_each_block_with_its_policy_and_scan_makes_one_loop():
    assert not _remats(_top_level_eqns()) and not _layer_scans(_top_level_eqns())
    remats = _remats(_top_level_eqns(remat="dots"))
    assert len(remats) == LAYERS
    assert all(e.params["policy"] is REMAT_POLICIES["dots"] for e in remats)
    scans = _layer_scans(_top_level_eqns(scan_layers=True, remat="full"))
    assert len(scans) == 1 and len(_remats(scans[0].params["jaxpr"].jaxpr.eqns)) == 1


def test_scanned_model_decodes_as_its_forward_with_a_stacked_cache():
    model = LanguageModel(dataclasses.replace(UNROLLED, scan_layers=True))
    assert model.init_cache(B, T)["state"].shape == (LAYERS, B, 2, 8, 8)
    logits, decoded = results()["scan_decoding"]
    # Token-by-token recurrence against the chunked forward in f32: the README's stated 1e-4,
    # the bound every decoding test of the suite uses.
    np.testing.assert_allclose(decoded, logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options, match", [
    (dict(remat="some"), "ModelConfig.remat must be one of"),
    (dict(scan_layers=1), "ModelConfig.scan_layers must be True or False"),
    (dict(scan_layers=True, layer_mixers=("deltanet", "attention")),
     "ModelConfig.scan_layers needs one mixer in every layer"),
])
def test_bad_deep_model_options_name_the_field(options, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(UNROLLED, **options)


def test_scanned_attention_cache_overflow_raises_before_the_scan():
    config = ModelConfig(vocab_size=16, d_model=8, num_layers=2, num_heads=1, mixer="attention",
                         mlp=None, scan_layers=True)
    model = LanguageModel(config)
    tokens = jnp.zeros((1, 2), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)["params"]
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    extend = functools.partial(model.apply, {"params": params}, method=model.extend)
    _, full = extend(tokens, model.init_cache(1, 2))
    with pytest.raises(ValueError, match="start=2: .* do not fit a KV cache of 2 positions"):
        extend(tokens[:, :1], full)
