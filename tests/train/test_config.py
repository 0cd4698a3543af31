"""Bad configs fail before any compute, with a ValueError naming the field."""

import jax
import ml_collections
import pytest

from deltajax.train import default_config, fit, merge_with_defaults
from tests.train.helpers import MODEL, TRAIN_SOURCE, tiny_config


def _fit_error(config, tmp_path, devices=None):
    with pytest.raises(ValueError) as error:
        fit(config, MODEL, TRAIN_SOURCE, str(tmp_path / "run"), devices=devices)
    assert not (tmp_path / "run").exists()  # nothing was written: it failed before any work
    return str(error.value)


def test_an_unknown_key_is_rejected_naming_its_path(tmp_path):
    config = tiny_config()
    config.optimizer.lerning_rate = 0.1
    assert "config.optimizer.lerning_rate" in _fit_error(config, tmp_path)
    top = tiny_config()
    top.num_stepz = 3
    assert "config.num_stepz" in _fit_error(top, tmp_path)


def test_a_global_batch_not_divisible_by_the_data_axis_is_rejected(tmp_path):
    message = _fit_error(tiny_config(global_batch_size=12), tmp_path, devices=jax.devices()[:8])
    assert "config.global_batch_size=12" in message and "data axis" in message


def test_a_missing_restore_dir_is_rejected_naming_the_field(tmp_path):
    config = tiny_config(checkpoint__restore_dir=str(tmp_path / "nope"))
    assert "config.checkpoint.restore_dir" in _fit_error(config, tmp_path)


@pytest.mark.parametrize("field, value, name", [
    ("schedule__name", "linear", "config.schedule.name"),
    ("schedule__decay_shape", "exp", "config.schedule.decay_shape"),
    ("compute_dtype", "float16", "config.compute_dtype"),
    ("num_steps", 0, "config.num_steps"),
    ("mesh__model", 3, "config.mesh.model"),
    ("grad_accum_steps", 3, "config.grad_accum_steps"),
])
def test_invalid_values_name_their_field(tmp_path, field, value, name):
    assert name in _fit_error(tiny_config(**{field: value}), tmp_path, devices=jax.devices()[:8])


def test_merge_keeps_defaults_and_is_idempotent():
    config = tiny_config(checkpoint__best_metric="eval/loss")
    merged = merge_with_defaults(config)
    assert merged.optimizer.learning_rate == 3e-3 and merged.optimizer.b2 == 0.95
    assert merge_with_defaults(merged).to_dict() == merged.to_dict()
    assert set(default_config().keys()) == set(merged.keys())


def test_a_field_given_a_value_of_the_wrong_type_names_the_field():
    config = ml_collections.ConfigDict({"optimizer": {"learning_rate": "fast"}})
    with pytest.raises(ValueError, match="config.optimizer.learning_rate"):
        merge_with_defaults(config)
