"""The in-context modular arithmetic study end to end at the smoke preset: a run trains, the
k-shot scores, the report (table, shot table, plot, JSON), and the config's checks. One
module-scoped study run serves the tests that read its outputs; it trains the attention run only
(the script is the same for every mixer, and DeltaNet's compile would double the fixture's time:
the checks below build both models of every preset)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.icl_modular import MIXERS, PRESETS, get_config
from deltajax import study
from deltajax.data.icl_modular import ICLModularSource, pair_split
from deltajax.train.config import validate_config
from experiments import icl_modular

SMOKE_RUNS = ["attention-tasks8"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _smoke():
    config = get_config("smoke")
    config.only = "attention-*"
    return config


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("icl_modular")
    out = workdir / "published" / "cpu-icl-modular"
    icl_modular.run_study(_smoke(), str(workdir), out=str(out),
                          command="python -m experiments.icl_modular smoke")
    return workdir


def test_study_trains_a_run_and_scores_every_shot(study_dir):
    assert sorted(d.name for d in (study_dir / "runs").iterdir()) == SMOKE_RUNS
    n_ctx = get_config("smoke").task.n_ctx
    for name in SMOKE_RUNS:
        run_dir = study_dir / "runs" / name
        result = json.loads((run_dir / "result.json").read_text())
        assert result["steps"] == 4
        for split in ("id", "ood"):
            shots = result[f"{split}_by_shot"]
            assert len(shots) == n_ctx and all(0.0 <= a <= 1.0 for a in shots)
            assert result[f"{split}_last"] == shots[-1]
        assert [step for step, _ in result["ood_curve"]] == [4]
        assert any(n.startswith("events.out.tfevents") for n in os.listdir(run_dir / "tensorboard"))
    config = json.loads((study_dir / "runs" / "attention-tasks8" / "config.json").read_text())
    assert config["model"]["mixer"] == "attention" and config["task"]["num_tasks"] == 8
    assert [r["name"] for r in get_config("smoke").sweep] == ["attention-tasks8", "deltanet-tasks8"]


def test_report_writes_the_table_with_chance_and_published_claims_and_a_plot(study_dir):
    out = study_dir / "published" / "cpu-icl-modular"
    table = (out.parent / "cpu-icl-modular.md").read_text()
    assert "python -m experiments.icl_modular smoke" in table and "1 of 1 runs finished" in table
    assert "| n_tasks | train acc (%) | i.d. acc (%) | o.o.d. acc (%) | chance (%) |" in table
    assert "| attention | 8 |" in table and "| 20.0 |" in table  # chance 1/p at p = 5
    assert "o.o.d. generalisation" in table
    assert "| k=1 | k=2 | k=4 |" in table
    assert (out.parent / "cpu-icl-modular.png").stat().st_size > 0
    assert json.loads((out.parent / "cpu-icl-modular.json").read_text())["preset"] == "smoke"


def test_shot_accuracy_scores_the_z_of_each_example():
    config = _smoke()
    p, n_ctx, (a, b) = config.task.p, config.task.n_ctx, (2, 3)
    source = ICLModularSource(p, [[a, b]], pair_split(p, 0.8)[0], n_ctx, num_examples=16)

    class Oracle:  # the task's z from the two inputs before each position; wrong at the last
        def apply(self, variables, inputs_BT):
            del variables
            z_BT = (a * jnp.roll(inputs_BT, 1, axis=1) + b * inputs_BT) % p
            z_BT = z_BT.at[:, -1].add(1) % p
            return jax.nn.one_hot(z_BT, p)

    expected = np.ones(n_ctx)
    expected[-1] = 0.0
    np.testing.assert_array_equal(
        icl_modular.shot_accuracy(config, icl_modular.predictor(Oracle()), {}, source), expected)


def test_presets_pass_the_checks_and_sweep_both_mixers_over_task_counts():
    for preset in PRESETS:
        icl_modular.check(get_config(preset))
        # The trainer accepts each preset's fields (the paper preset is not run here).
        validate_config(study.trainer_config(get_config(preset)), num_devices=1,
                        num_processes=1)
    paper = get_config("paper")
    assert {r["name"] for r in paper.sweep} == {f"{m}-tasks{n}" for m in MIXERS
                                                 for n in (8, 16, 32, 64, 128, 256, 512)}
    assert paper.task.p == 29 and paper.task.n_ctx == 32 and paper.model.num_layers == 4
    cpu = get_config("cpu")
    assert len({r["overrides"]["task"]["num_tasks"] for r in cpu.sweep}) >= 3
    text = study.config_help(os.path.join(REPO, "configs", "icl_modular.py"))
    for preset, about in PRESETS.items():
        assert len(about) <= 96 and any(line.split()[:1] == [preset] and line.endswith(about)
                                        for line in text.splitlines())


@pytest.mark.parametrize("change, match", [
    (lambda c: c.task.update(p=9), r"config\.task\.p must be a prime"),
    (lambda c: c.task.update(n_ctx=30), r"config\.task\.n_ctx=30 must be at most"),
    (lambda c: c.sweep[0]["overrides"]["task"].update(num_tasks=7),
     r"config\.task\.num_tasks=7 must be a multiple of 4"),
    (lambda c: c.task.update(num_ood_tasks=30), r"config\.task\.num_tasks=8 must be at most"),
    (lambda c: c.task.update(train_fraction=1.0), r"config\.task\.train_fraction"),
    (lambda c: c.task.update(num_eval_examples=4), r"config\.task\.num_eval_examples=4"),
    (lambda c: c.model.update(d_model=15), r"config\.model: .*d_model"),
    (lambda c: c.update(extra=1), "top-level keys"),
])
def test_bad_configs_are_rejected_naming_the_field(change, match):
    config = get_config("smoke")
    change(config)
    with pytest.raises(ValueError, match=match):
        icl_modular.check(config)


def test_bad_preset_is_rejected():
    with pytest.raises(ValueError, match="preset"):
        get_config("huge")
