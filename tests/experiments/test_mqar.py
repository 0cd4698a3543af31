"""The MQAR study end to end at the smoke preset: the sweep, its skip and resume, its report, and
the config's checks. One module-scoped study run serves the tests that read its outputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs.mqar import (
    CPU_LEARNING_RATE,
    MAKE_RUN_LEARNING_RATE,
    MAKE_RUN_MIXERS,
    MIXERS,
    PAPER_LEARNING_RATES,
    PAPER_SETTINGS,
    get_config,
    sweep,
)
from deltajax import study
from deltajax.train import fit
from experiments import mqar

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE_RUNS = ["deltanet-T32-kv4-d16-lr3.0e-03-seed0", "attention-T32-kv4-d16-lr3.0e-03-seed0"]


def _recurrent_smoke():
    # The recurrent backend (the lax.scan), as a user comparing paths would run it.
    config = get_config("smoke")
    config.model.delta_rule.backend = "recurrent"
    return config


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mqar")
    mqar.run_study(_recurrent_smoke(), str(workdir), command="python -m experiments.mqar smoke")
    return workdir


def test_study_trains_every_run_and_writes_table_plot_config_and_logs(study_dir):
    table = (study_dir / "results.md").read_text()
    assert "| deltanet |" in table and "| attention |" in table and "python -m" in table
    assert (study_dir / "results.png").stat().st_size > 0
    config = json.loads((study_dir / "config.json").read_text())
    assert config["model"]["delta_rule"]["backend"] == "recurrent"
    assert sorted(d.name for d in (study_dir / "runs").iterdir()) == sorted(SMOKE_RUNS)
    for name in SMOKE_RUNS:
        run_dir = study_dir / "runs" / name
        result = json.loads((run_dir / "result.json").read_text())
        assert result["steps"] == 4 and 0.0 <= result["accuracy"] <= 1.0
        assert np.isfinite(result["loss"])
        assert any(n.startswith("events.out.tfevents") for n in os.listdir(run_dir / "tensorboard"))
    assert json.loads((study_dir / "runs" / SMOKE_RUNS[1] / "config.json").read_text())[
        "model"]["delta_rule"] is None  # attention's run drops the delta-rule group


def test_second_call_skips_finished_runs_and_publishes(study_dir, tmp_path, capsys):
    stamps = [os.stat(study_dir / "runs" / n / "result.json").st_mtime_ns for n in SMOKE_RUNS]
    results = mqar.run_study(_recurrent_smoke(), str(study_dir), out=str(tmp_path / "published"),
                             command="python -m experiments.mqar --smoke")
    printed = capsys.readouterr().out
    assert all(f"{name}: reused" in printed for name in SMOKE_RUNS)
    assert [os.stat(study_dir / "runs" / n / "result.json").st_mtime_ns
            for n in SMOKE_RUNS] == stamps  # not retrained
    assert [r["name"] for r in results] == SMOKE_RUNS
    published = (tmp_path / "published.md").read_text()
    assert published.count("| deltanet |") == 1 and "2 of 2 runs finished" in published
    assert "python -m experiments.mqar --smoke" in published
    assert (tmp_path / "published.png").stat().st_size > 0
    assert json.loads((tmp_path / "published.json").read_text())["preset"] == "smoke"


def test_interrupted_run_resumes_to_the_same_result_as_a_straight_run(study_dir, tmp_path):
    # The attention run: resuming is the trainer's, whatever the mixer; it compiles fastest.
    config = study.run_config(_recurrent_smoke(), _recurrent_smoke().sweep[1])
    straight = json.loads((study_dir / "runs" / SMOKE_RUNS[1] / "result.json").read_text())
    # A preemption after step 2 (a checkpoint is saved every 2 steps), then the run again.
    fit(mqar.trainer_config(config), mqar.build_model(config),
        mqar.make_source(config, split="train"), str(tmp_path), stop_at=2)
    resumed = mqar.train_and_evaluate(config, str(tmp_path))
    assert resumed["steps"] == straight["steps"] == 4
    assert resumed["loss"] == straight["loss"] and resumed["accuracy"] == straight["accuracy"]


def test_scripts_run_as_a_file_and_as_a_module(tmp_path):
    # --report_only on an empty workdir: the flags, the config and the report, no training.
    for launcher in (["experiments/mqar.py"], ["-m", "experiments.mqar"]):
        done = subprocess.run(
            [sys.executable, *launcher, "--config=configs/mqar.py:smoke", "--report_only",
             f"--workdir={tmp_path}", "--config.only=deltanet-*,attention-*"],  # README's list
            cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "0 of 2 runs finished" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("runs, match", [
    (dict(settings=((32, 9),)), "4 \\* num_kv_pairs <= seq_len"),
    (dict(d_models=(0,)), "d_model"),
    (dict(learning_rates=(-1.0,)), "learning_rate"),
])
def test_bad_runs_are_rejected_naming_the_field(runs, match):
    config = get_config("smoke")
    config.sweep = sweep(**{**dict(mixers=("deltanet",), d_models=(16,), settings=((32, 4),),
                                   learning_rates=(1e-3,)), **runs})
    with pytest.raises(ValueError, match=match):
        mqar.check(config)


def test_bad_mixer_and_preset_are_rejected():
    with pytest.raises(ValueError, match="mixers"):
        sweep(("deltanet", "mamba"), (16,), ((32, 4),), (1e-3,))
    with pytest.raises(ValueError, match="preset"):
        get_config("huge")


def test_table_keeps_the_best_learning_rate_per_cell_and_marks_missing_cells():
    config = get_config("smoke")
    config.sweep = sweep(("deltanet", "attention"), (16, 32), ((32, 4),), (1e-3, 3e-3, 1e-2),
                         seeds=(0, 1))
    accuracy = {(16, "1.0e-03", 0): 0.5, (16, "3.0e-03", 0): 0.875, (16, "3.0e-03", 1): 0.625,
                (16, "1.0e-02", 0): 0.25, (16, "1.0e-02", 1): 0.5, (32, "1.0e-03", 0): 0.75}
    results = [dict(name=f"deltanet-T32-kv4-d{d}-lr{lr}-seed{seed}", accuracy=acc,
                    steps=100 * (seed + 1)) for (d, lr, seed), acc in accuracy.items()]
    table = mqar.markdown_table(config, results)
    # The best mean over seeds (75.0 at 3e-3, not the single 50.0 at 1e-3), with its range.
    assert ("| deltanet | 75.0 (62.5-87.5) [lr 3.0e-03; 100-200 steps] | 75.0 [lr 1.0e-03; "
            "100 steps; 1 of 3 lrs; 1 of 2 seeds] | ~100 (at every published setting; DeltaNet "
            "Fig. 2) |") in table
    assert "| attention | - | - | ~100 (at every" in table
    assert "chance, one of the 4 values in context: 25.0%" in table


def test_table_gives_the_published_value_of_a_mixer_and_setting():
    config = get_config("smoke")
    config.sweep = sweep(("attention_conv", "linear_attention"), (16,), ((64, 4),), (1e-3,))
    table = mqar.markdown_table(config, [])
    assert set(mqar.PUBLISHED_SETTINGS) == set(PAPER_SETTINGS)
    assert "| attention_conv | - | ~100 (Zoology Fig. 2, DeltaNet Fig. 2) |" in table
    assert "| linear_attention | - | - |" in table
    config.sweep = sweep(("attention_conv",), (16,), ((128, 32),), (1e-3,))
    assert ("| attention_conv | - | ~100 (at every published setting; Zoology Fig. 2, DeltaNet "
            "Fig. 2) |") in mqar.markdown_table(config, [])


def test_presets_plan_the_published_grid_and_one_recipe_per_cpu_preset():
    paper = get_config("paper")
    cells = [mqar.cell(paper, run) for run in paper.sweep]
    assert len(cells) == len(MIXERS) * 4 * 4 * 4 * 2  # d_models, settings, lrs, 2 seeds
    assert {(c[0], c[1]) for c in cells} == set(PAPER_SETTINGS)
    np.testing.assert_allclose(sorted({c[4] for c in cells}), np.logspace(-4, -2, 4))
    for preset in ("cpu", "cpu_sweep", "cpu_hard"):
        study.check_config(get_config(preset), "mqar")
    assert {mqar.cell(get_config("cpu_hard"), r)[4] for r in get_config("cpu_hard").sweep} == {
        CPU_LEARNING_RATE}
    cpu = get_config("cpu")
    assert [mqar.cell(cpu, r)[2] for r in cpu.sweep] == [
        "deltanet", "linear_attention", "linear_attention_elu", "attention_conv"]
    assert {mqar.cell(cpu, r)[4] for r in cpu.sweep} == {MAKE_RUN_LEARNING_RATE}
    # The sweep: the make-run mixers share one set of rates in each (setting, d_model), the
    # others have the grid's third alone, and make run's cell is among them.
    lrs = {}
    for c in (mqar.cell(get_config("cpu_sweep"), r) for r in get_config("cpu_sweep").sweep):
        lrs.setdefault((c[0], c[1], c[3]), {}).setdefault(c[2], set()).add(c[4])
    for cell, by_mixer in lrs.items():
        assert {frozenset(by_mixer[m]) for m in MAKE_RUN_MIXERS} == {
            frozenset(by_mixer["deltanet"])}, cell
        others = set().union(*(v for m, v in by_mixer.items() if m not in MAKE_RUN_MIXERS))
        assert others <= {CPU_LEARNING_RATE}, cell
    assert MAKE_RUN_LEARNING_RATE in lrs[128, 16, 64]["attention_conv"]
    assert lrs[128, 32, 64]["deltanet"] == {CPU_LEARNING_RATE, PAPER_LEARNING_RATES[3]}
    # Every published cell but (512, 64), for every make-run mixer at make run's rate.
    assert all(lrs[T, kv, 64][m] == {MAKE_RUN_LEARNING_RATE}
               for T, kv in PAPER_SETTINGS[:3] for m in MAKE_RUN_MIXERS)
    sweep_cells = [mqar.cell(get_config("cpu_sweep"), r) for r in get_config("cpu_sweep").sweep]
    assert {c[5] for c in sweep_cells} == {0, 1}
    assert {c[2] for c in sweep_cells} >= {"attention", "attention_conv", "deltanet_noconv"}
