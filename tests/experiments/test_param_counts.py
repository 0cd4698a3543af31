"""param_counts.py counts from shapes alone what a real initialisation holds."""

import jax

from deltajax.models import LanguageModel, ModelConfig, count_params
from experiments.param_counts import SHAPES, parameter_count


def test_shape_only_count_equals_the_initialised_count():
    config = ModelConfig(vocab_size=50, d_model=16, num_layers=2, num_heads=2,
                         mixer="gated_deltanet")
    params = jax.jit(LanguageModel(config).init)(jax.random.PRNGKey(0),
                                                 jax.numpy.zeros((1, 8), int))["params"]
    assert parameter_count(config) == count_params(params)
    big = next(c for n, c in SHAPES.items() if n.startswith("340M"))
    assert 330e6 < parameter_count(big) < 345e6
