"""Data parallelism on 8 virtual CPU devices: the same global batch gives the same training."""

import jax
import numpy as np
import pytest

from deltajax.train import fit, sharding
from deltajax.train.config import merge_with_defaults
from tests.train.helpers import MODEL, TRAIN_SOURCE, tiny_config

STEPS = 6



@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    return fit(tiny_config(num_steps=STEPS, checkpoint__every_steps=0), MODEL, TRAIN_SOURCE,
               str(tmp_path_factory.mktemp("one")), devices=jax.devices()[:1])


def _assert_same_training(result, reference):
    for got, want in zip(result.history, reference.history, strict=True):
        for name in ("loss", "accuracy", "grad_norm"):
            np.testing.assert_allclose(got[name], want[name], rtol=2e-5, err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                         rtol=1e-4, atol=1e-6),
                 result.state.params, reference.state.params)


def test_eight_devices_train_like_one_device_on_the_same_global_batch(one_device,
                                                                      tmp_path_factory):
    assert len(jax.devices()) == 8
    result = fit(tiny_config(num_steps=STEPS, checkpoint__every_steps=0), MODEL, TRAIN_SOURCE,
                 str(tmp_path_factory.mktemp("eight")))
    _assert_same_training(result, one_device)
    kernel = result.state.params["head"]["kernel"]
    assert len(kernel.sharding.device_set) == 8


def test_the_pmap_path_trains_like_the_jit_path(one_device, tmp_path_factory):
    config = tiny_config(num_steps=STEPS, checkpoint__every_steps=0, mesh__parallelism="pmap")
    result = fit(config, MODEL, TRAIN_SOURCE, str(tmp_path_factory.mktemp("pmap")))
    _assert_same_training(result, one_device)


def test_a_model_axis_shards_weights_and_trains_like_one_device(one_device, tmp_path_factory):
    config = tiny_config(num_steps=STEPS, checkpoint__every_steps=0, mesh__model=2)
    result = fit(config, MODEL, TRAIN_SOURCE, str(tmp_path_factory.mktemp("model")))
    _assert_same_training(result, one_device)
    spec = result.state.params["head"]["kernel"].sharding.spec
    assert tuple(spec)[-1] == sharding.MODEL


def test_the_mesh_has_a_data_and_a_model_axis_over_all_devices():
    mesh = sharding.make_mesh(merge_with_defaults(tiny_config(mesh__model=2)))
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    with pytest.raises(ValueError, match="config.mesh.data"):
        sharding.make_mesh(merge_with_defaults(tiny_config(mesh__data=8, mesh__model=2)))


def test_deltanet_lm_trains_on_eight_devices_like_on_one(tmp_path_factory):
    # The chunked delta rule under a data-parallel step: it once deadlocked XLA:CPU's virtual
    # devices (a LAPACK solve waiting on the pool the all-reduce held; see ops/chunked.py).
    from deltajax.models import LanguageModel, ModelConfig
    model = LanguageModel(ModelConfig(vocab_size=12, d_model=16, num_layers=1, num_heads=2,
                                      mlp=None, delta_rule=dict(backend="chunked", chunk_size=8)))
    config = tiny_config(num_steps=4, checkpoint__every_steps=0, schedule__warmup_steps=1)
    results = [fit(config, model, TRAIN_SOURCE, str(tmp_path_factory.mktemp(f"delta{n}")),
                   devices=jax.devices()[:n]) for n in (1, 8)]
    _assert_same_training(results[1], results[0])
