"""Resume refuses checkpoints it cannot use, and then changes no file: a changed model or
optimizer config (does not match) and checkpoints that cannot be read stop the run."""

import os
import shutil

import jax
import pytest

from deltajax.data import make_dataset, make_iterator
from deltajax.train import checkpoint as ckpt
from deltajax.train import fit
from deltajax.train.config import merge_with_defaults
from deltajax.train.optimizer import make_optimizer
from deltajax.train.step import init_state
from deltajax.train.testing import TinyLM
from tests.train.helpers import MODEL, TRAIN_SOURCE, VOCAB, tiny_config

DEVICE = jax.devices()[:1]
WIDER = TinyLM(VOCAB, d_model=32)  # MODEL has d_model=16


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A workdir holding checkpoints 5 and 10 of MODEL; tests copy it."""
    workdir = tmp_path_factory.mktemp("saved")
    fit(tiny_config(), MODEL, TRAIN_SOURCE, str(workdir), devices=DEVICE, stop_at=10)
    return workdir


@pytest.fixture
def run(saved_run, tmp_path):
    shutil.copytree(saved_run, tmp_path / "run")
    return tmp_path / "run"


def _snapshot(directory) -> dict:
    """Every directory and file under `directory` with the file's bytes."""
    tree = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            tree[os.path.relpath(os.path.join(root, name), directory)] = None
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                tree[os.path.relpath(path, directory)] = f.read()
    return tree


def test_a_changed_model_stops_naming_the_parameter_and_both_shapes_and_changes_no_file(run):
    before = _snapshot(run / "checkpoints")
    with pytest.raises(ValueError) as error:
        fit(tiny_config(), WIDER, TRAIN_SOURCE, str(run), devices=DEVICE)
    message = str(error.value)
    assert ("checkpoint step 10" in message and "params.embed.embedding is float32[12, 16] in "
            "the checkpoint but float32[12, 32] in this run" in message), message
    assert "new workdir" in message and "config.checkpoint.restore_dir" in message
    assert _snapshot(run / "checkpoints") == before


def test_removing_grad_clipping_stops_naming_the_optimizer_state_and_changes_no_file(run):
    before = _snapshot(run / "checkpoints")
    with pytest.raises(ValueError, match=r"opt_state\.\S+ \(\w+\[.*\]\) is in this run's state "
                                         "but not in the checkpoint"):
        fit(tiny_config(optimizer__grad_clip_norm=0.0), MODEL, TRAIN_SOURCE, str(run),
            devices=DEVICE)
    assert _snapshot(run / "checkpoints") == before


def test_a_restore_dir_of_another_model_is_refused_naming_the_config_field(run, tmp_path):
    before = _snapshot(run / "checkpoints")
    config = tiny_config(checkpoint__restore_dir=str(run / "checkpoints"))
    with pytest.raises(ValueError, match=r"config\.checkpoint\.restore_dir=.*params\.embed"):
        fit(config, WIDER, TRAIN_SOURCE, str(tmp_path / "new"), devices=DEVICE)
    assert _snapshot(run / "checkpoints") == before


def _damage_all(checkpoints):
    for step in ("5", "10"):
        for root, _, files in os.walk(checkpoints / step / "state"):
            for name in files:
                if not name.startswith("_"):
                    open(os.path.join(root, name), "wb").close()


def test_when_no_checkpoint_can_be_read_the_run_stops_listing_them_and_renames_nothing(run):
    _damage_all(run / "checkpoints")
    before = _snapshot(run / "checkpoints")
    with pytest.raises(ValueError, match=r"no checkpoint .* can be read \(step 10: .*; step 5: "):
        fit(tiny_config(), MODEL, TRAIN_SOURCE, str(run), devices=DEVICE)
    assert _snapshot(run / "checkpoints") == before


@pytest.mark.parametrize("problem", ["damaged", "other model"])
def test_the_data_iterator_stays_put_when_no_state_restores(run, problem):
    """grain's restore moves the iterator in place: it must run only after the state's."""
    config = merge_with_defaults(tiny_config())
    model = MODEL
    if problem == "damaged":
        _damage_all(run / "checkpoints")
    else:
        model = WIDER
    tx, _ = make_optimizer(config)
    shapes = jax.eval_shape(lambda rng: init_state(model, tx, rng, TRAIN_SOURCE[0]["inputs"][None]),
                            jax.random.PRNGKey(0))
    on_device = jax.sharding.SingleDeviceSharding(DEVICE[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_device),
                            shapes)
    iterator = make_iterator(make_dataset(TRAIN_SOURCE, seed=0, global_batch_size=8))
    manager = ckpt.make_manager(str(run / "checkpoints"), config)
    with pytest.raises(ValueError):
        ckpt.restore_latest(manager, abstract, iterator)
    manager.close()
    assert iterator.get_state() == make_iterator(
        make_dataset(TRAIN_SOURCE, seed=0, global_batch_size=8)).get_state()
