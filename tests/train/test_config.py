"""Bad configs fail before any compute, with a ValueError naming the field."""

import math

import jax
import ml_collections
import pytest

from deltajax.train import default_config, fit, merge_with_defaults, validate_config
from deltajax.train.config import FIELD_RULES
from deltajax.train.optimizer import FLA_NO_DECAY_NAMES, decay_mask
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
    ("optimizer__learning_rate", math.nan, "config.optimizer.learning_rate"),
    ("logging__every_steps", 0, "config.logging.every_steps"),
    ("checkpoint__max_to_keep", 0, "config.checkpoint.max_to_keep"),
    ("eval__num_batches", 0, "config.eval.num_batches"),
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


def _overrides(flat: dict) -> ml_collections.ConfigDict:
    nested = {}
    for path, value in flat.items():
        *sections, name = path.split(".")
        target = nested
        for section in sections:
            target = target.setdefault(section, {})
        target[name] = value
    return ml_collections.ConfigDict(nested)


# (overrides of the defaults, the field the error must name, a fragment of the allowed range)
REJECTED = [
    ({"seed": -1}, "seed", "[0, 2**32)"),
    ({"num_steps": 0}, "num_steps", ">= 1"),
    ({"global_batch_size": -8}, "global_batch_size", ">= 1"),
    ({"grad_accum_steps": 0}, "grad_accum_steps", ">= 1"),
    ({"compute_dtype": "float16"}, "compute_dtype", "one of"),
    ({"optimizer.learning_rate": math.nan}, "optimizer.learning_rate", "finite number > 0"),
    ({"optimizer.learning_rate": -1e-3}, "optimizer.learning_rate", "finite number > 0"),
    ({"optimizer.learning_rate": math.inf}, "optimizer.learning_rate", "finite number > 0"),
    ({"optimizer.b1": 1.5}, "optimizer.b1", "[0, 1)"),
    ({"optimizer.b1": 1.0}, "optimizer.b1", "[0, 1)"),
    ({"optimizer.b2": -0.1}, "optimizer.b2", "[0, 1)"),
    ({"optimizer.eps": 0.0}, "optimizer.eps", "> 0"),
    ({"optimizer.weight_decay": -0.1}, "optimizer.weight_decay", ">= 0"),
    ({"optimizer.no_decay_names": ("bias", 3)}, "optimizer.no_decay_names", "names (str)"),
    ({"optimizer.grad_clip_norm": -1.0}, "optimizer.grad_clip_norm", ">= 0"),
    ({"optimizer.grad_clip_norm": math.nan}, "optimizer.grad_clip_norm", "finite"),
    ({"schedule.name": "linear"}, "schedule.name", "one of"),
    ({"schedule.warmup_steps": -1}, "schedule.warmup_steps", ">= 0"),
    ({"schedule.warmup_steps": 100}, "schedule.warmup_steps", "the cosine needs a step"),
    ({"schedule.name": "wsd", "schedule.warmup_steps": 90}, "schedule.warmup_steps",
     "[0, 80]"),
    ({"schedule.name": "constant", "schedule.warmup_steps": 101}, "schedule.warmup_steps",
     "[0, 100]"),
    ({"schedule.final_lr_fraction": 1.5}, "schedule.final_lr_fraction", "[0, 1]"),
    ({"schedule.decay_fraction": 0.0}, "schedule.decay_fraction", "(0, 1]"),
    ({"schedule.decay_shape": "exp"}, "schedule.decay_shape", "one of"),
    ({"checkpoint.every_steps": -1}, "checkpoint.every_steps", ">= 0"),
    ({"checkpoint.max_to_keep": 0}, "checkpoint.max_to_keep", ">= 1"),
    ({"checkpoint.best_metric": "loss"}, "checkpoint.best_metric", "eval metric"),
    ({"checkpoint.best_metric": "eval/loss"}, "checkpoint.best_metric", "eval.every_steps > 0"),
    ({"checkpoint.best_mode": "lowest"}, "checkpoint.best_mode", "one of"),
    ({"checkpoint.restore_dir": ""}, "checkpoint.restore_dir", "directory path"),
    ({"eval.every_steps": -5}, "eval.every_steps", ">= 0"),
    ({"eval.num_batches": 0}, "eval.num_batches", ">= 1"),
    ({"eval.early_stop_metric": ""}, "eval.early_stop_metric", "metric name"),
    ({"eval.early_stop_value": math.nan}, "eval.early_stop_value", "finite"),
    ({"eval.early_stop_mode": "up"}, "eval.early_stop_mode", "one of"),
    ({"logging.every_steps": 0}, "logging.every_steps", ">= 1"),
    ({"logging.histogram_every_steps": -1}, "logging.histogram_every_steps", ">= 0"),
    ({"mesh.data": 0}, "mesh.data", "-1"),
    ({"mesh.data": -2}, "mesh.data", "-1"),
    ({"mesh.model": 0}, "mesh.model", ">= 1"),
    ({"mesh.parallelism": "pjit"}, "mesh.parallelism", "one of"),
    ({"data.seq_len": 1}, "data.seq_len", ">= 2"),
    ({"data.vocab_size": 1}, "data.vocab_size", ">= 2"),
    ({"data.num_train_examples": 0}, "data.num_train_examples", ">= 1"),
    ({"data.num_eval_examples": 0}, "data.num_eval_examples", ">= 1"),
    ({"data.num_epochs": 0}, "data.num_epochs", ">= 1"),
    ({"data.prefetch_threads": -1}, "data.prefetch_threads", ">= 0"),
    ({"data.prefetch_buffer": -1}, "data.prefetch_buffer", ">= 0"),
    ({"distributed.coordinator_address": ""}, "distributed.coordinator_address", "host:port"),
    ({"distributed.num_processes": 0}, "distributed.num_processes", ">= 1"),
    ({"distributed.process_id": -1}, "distributed.process_id", ">= 0"),
    ({"distributed.num_processes": 2, "distributed.process_id": 2}, "distributed.process_id",
     "[0, config.distributed.num_processes=2)"),
    ({"distributed.cpu_collectives": "nccl"}, "distributed.cpu_collectives", "one of"),
]


@pytest.mark.parametrize("overrides, path, allowed", REJECTED,
                         ids=[f"{path}={list(o.values())[-1]!r}" for o, path, _ in REJECTED])
def test_each_bad_value_is_rejected_naming_its_path_and_range(overrides, path, allowed):
    config = merge_with_defaults(_overrides(overrides))
    with pytest.raises(ValueError) as error:
        validate_config(config, num_devices=1, num_processes=1)
    assert f"config.{path}" in str(error.value) and allowed in str(error.value), error.value


def _leaf_paths(config, prefix=""):
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict) and f"{prefix}{key}" != "model":
            yield from _leaf_paths(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_every_field_of_the_defaults_has_a_rule_and_the_defaults_pass_it():
    assert set(_leaf_paths(default_config())) == set(FIELD_RULES)
    validate_config(default_config(), num_devices=1, num_processes=1)
    rejected = {path for _, path, _ in REJECTED}
    # Booleans and free-form fields aside, every field has a rejected value in the table.
    free = {"checkpoint.async_save", "logging.progress_bar", "data.shuffle", "data.in_memory",
            "distributed.initialize", "model"}
    assert set(FIELD_RULES) - free - rejected == set()


def test_an_integer_field_refuses_a_boolean_that_ml_collections_lets_through():
    config = default_config()
    config.logging.every_steps = True  # bool is an int subclass: the ConfigDict accepts it
    with pytest.raises(ValueError, match=r"config\.logging\.every_steps must be an integer"):
        validate_config(config, num_devices=1, num_processes=1)


def test_weight_decay_leaves_out_what_fla_leaves_out_by_default():
    assert default_config().optimizer.no_decay_names == FLA_NO_DECAY_NAMES
    params = {"layer": {"A_log": 0.0, "dt_bias": 0.0, "q_proj": {"kernel": 0.0, "bias": 0.0}},
              "norm": {"scale": 0.0}, "embed": {"embedding": 0.0}}
    mask = decay_mask(params, default_config().optimizer.no_decay_names)
    assert mask == {"layer": {"A_log": False, "dt_bias": False,
                              "q_proj": {"kernel": True, "bias": False}},
                    "norm": {"scale": False}, "embed": {"embedding": False}}
