"""Parameter counts of named model shapes, from jax.eval_shape (nothing is allocated).

    python experiments/param_counts.py
"""

import jax
import jax.numpy as jnp

from deltajax.models import LanguageModel, ModelConfig, count_params, hybrid

SHAPES = {
    **{f"MQAR 2-layer {mixer}, d={d}": ModelConfig(vocab_size=8192, d_model=d, num_layers=2,
                                                   num_heads=2, mixer=mixer, mlp=None)
       for mixer in ("deltanet", "attention") for d in (64, 128, 256, 512)},
    "340M DeltaNet (d=1024, 24 layers, 8 heads, vocab 32000, tied)": ModelConfig(
        vocab_size=32000, d_model=1024, num_layers=24, num_heads=8),
    "340M Gated DeltaNet (same shape)": ModelConfig(
        vocab_size=32000, d_model=1024, num_layers=24, num_heads=8, mixer="gated_deltanet"),
    "340M DeltaNet + SWA every 2nd layer (same shape)": ModelConfig(
        vocab_size=32000, d_model=1024, num_layers=24, num_heads=8,
        layer_mixers=hybrid("deltanet", "swa", 2, 24)),
}


def parameter_count(config: ModelConfig) -> int:
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    shapes = jax.eval_shape(LanguageModel(config).init, jax.random.PRNGKey(0), tokens)
    return count_params(shapes["params"])


if __name__ == "__main__":
    print("| model | parameters |\n|---|---:|")
    for name, config in SHAPES.items():
        print(f"| {name} | {parameter_count(config):,} |")
