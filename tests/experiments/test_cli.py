"""The study scripts as a user starts them: --help lists the presets (and sweeps) of the config,
a relative --config works from any directory, summary lines print no Python None."""

import os
import subprocess
import sys

import pytest

from deltajax import study
from experiments import lazy_rich

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDY_CONFIGS = ("mqar", "grokking", "lazy_rich", "state_tracking", "icl_modular")


@pytest.mark.parametrize("name", STUDY_CONFIGS)
def test_config_help_lists_every_preset_on_one_line(name):
    module = __import__(f"configs.{name}", fromlist=["PRESETS", "get_config"])
    text = study.config_help(os.path.join(REPO, "configs", f"{name}.py"))
    assert text.startswith(f"Presets (configs/{name}.py:<preset>):\n")
    lines = text.splitlines()
    for preset, about in module.PRESETS.items():
        assert "\n" not in about and len(about) <= 96, preset
        assert any(line.split()[:1] == [preset] and line.endswith(about) for line in lines)
        module.get_config(preset)  # every listed preset is one get_config takes


def test_grokking_help_lists_its_sweeps_and_each_is_a_valid_sweep():
    from configs import grokking

    text = study.config_help(os.path.join(REPO, "configs", "grokking.py"))
    assert "Sweeps (configs/grokking.py:<preset>,<sweep>):" in text
    for sweep, values in grokking.SWEEPS.items():
        assert f"  {sweep.ljust(14)}  {values}" in text
        assert len(grokking.get_config(f"cpu,{sweep}").sweep) == len(values.split(", "))


def test_a_config_without_presets_gets_no_preset_lines_and_names_alone_are_listed(tmp_path):
    (tmp_path / "plain.py").write_text("def get_config():\n    return {}\n")
    assert study.config_help(str(tmp_path / "plain.py")) == ""
    (tmp_path / "names.py").write_text("PRESETS = ('paper', 'cpu')\n")
    assert study.config_help(str(tmp_path / "names.py")) == \
        f"Presets ({tmp_path.name}/names.py:<preset>):\n  paper\n  cpu"


def test_a_relative_config_is_read_from_the_repository_when_missing_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    in_repo = os.path.join(REPO, "configs", "mqar.py")
    assert study.resolve_config_arg("configs/mqar.py:smoke", REPO) == f"{in_repo}:smoke"
    assert study.resolve_config_arg("configs/mqar.py", REPO) == in_repo
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mqar.py").write_text("")
    assert study.resolve_config_arg("configs/mqar.py:cpu", REPO) == "configs/mqar.py:cpu"
    assert study.resolve_config_arg("nowhere.py:cpu", REPO) == "nowhere.py:cpu"
    assert study.resolve_config_arg("/abs/x.py:cpu", REPO) == "/abs/x.py:cpu"
    argv = ["prog", "--config", "configs/grokking.py:cpu,mixer", "--config.only=a*",
            "--config=configs/lazy_rich.py:smoke", "--workdir=configs/mqar.py"]
    assert study.resolve_config_argv(argv, REPO) == [
        "prog", "--config", os.path.join(REPO, "configs", "grokking.py") + ":cpu,mixer",
        "--config.only=a*", f"--config={os.path.join(REPO, 'configs', 'lazy_rich.py')}:smoke",
        "--workdir=configs/mqar.py"]


def _script(tmp_path, *args):
    # A subprocess: the command line from another directory is the behaviour, and absl flags are
    # process-global.
    return subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)


def test_help_from_another_directory_lists_presets_sweeps_and_the_study_flags(tmp_path):
    done = _script(tmp_path, os.path.join(REPO, "experiments", "grokking_modular.py"), "--help")
    text = done.stdout + done.stderr
    assert "Presets (configs/grokking.py:<preset>):\n  nanda  Nanda et al. 2023" in text
    assert "Sweeps (configs/grokking.py:<preset>,<sweep>):\n  mixer " in text
    for flag in ("--config:", "--workdir:", "--out:", "--[no]report_only:"):
        assert flag in text


def test_a_study_runs_from_another_directory_with_the_repository_relative_config(tmp_path):
    done = _script(tmp_path, os.path.join(REPO, "experiments", "mqar.py"),
                   "--config=configs/mqar.py:smoke", "--report_only", "--workdir=out",
                   "--config.only=attention-*")
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "out" / "results.md").read_text()
    assert "0 of 1 runs finished" in report
    assert "--config=configs/mqar.py:smoke" in report  # the command as typed
    assert "None" not in done.stdout


def test_lazy_rich_summary_line_names_a_missing_drop_without_none():
    from configs.lazy_rich import get_config

    config = get_config("smoke")
    summary = {"train_drop_step": 40, "test_drop_step": None, "ratio": None, "steps": 200,
               "initial_train_loss": 0.2, "final_train_loss": 1e-3, "initial_test_loss": 0.19,
               "final_test_loss": 0.12, "final_alignment": 0.3, "initial_alignment": 0.16,
               "final_kernel_distance_rel": 0.05}
    line = lazy_rich.summary_line(config.model, summary, config.task.drop_fraction)
    assert "None" not in line
    assert line == ("alpha=1 eps=0.25: train loss 0.2 -> 0.001 (dropped at step 40), test loss "
                    "0.19 -> 0.12 (step -), ratio -: test loss not dropped within 200 steps "
                    "(ratio > 5)")
