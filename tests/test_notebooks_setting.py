"""The notebooks' set-up: a Colab install cell that is a no-op in a clone, the SMOKE switch that
`make test` sets (nbmake then executes each notebook at a small setting), and stored outputs
from a real run. Reads the .ipynb JSON; executes only the install cell."""

import json
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ("quickstart", "recall", "grokking", "scan_vs_pallas", "state_tracking")
SWITCH = 'SMOKE = os.environ.get("DELTAJAX_NOTEBOOK_SMOKE") == "1"'


def _cells(name: str) -> list:
    with open(os.path.join(ROOT, "notebooks", f"{name}.ipynb")) as f:
        return json.load(f)["cells"]


def _source(cell) -> str:
    return "".join(cell["source"])


def _code(name: str) -> list:
    return [c for c in _cells(name) if c["cell_type"] == "code"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_first_code_cell_installs_from_the_repository_with_the_accelerator_extra(name):
    install = _source(_code(name)[0])
    assert 'REPO_URL = "' in install
    assert 'importlib.util.find_spec("deltajax") is None' in install  # only when not importable
    assert '"git", "clone"' in install and '"pip", "install"' in install
    assert '"[gpu]"' in install and '"[tpu]"' in install


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_install_cell_is_a_no_op_in_a_clone(name, monkeypatch):
    """Run from notebooks/ as nbmake does: no clone, no pip; the clone goes on sys.path."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"the install cell ran {args} in a clone")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.chdir(os.path.join(ROOT, "notebooks"))
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    namespace = {}
    exec(_source(_code(name)[0]), namespace)  # noqa: S102  (the notebook's own cell)
    assert namespace["REPO_ROOT"] == ROOT


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_smoke_switch_is_read_before_any_work_and_explained(name):
    code = _code(name)
    assert SWITCH in _source(code[1]) or SWITCH in _source(code[0])
    assert sum(SWITCH in _source(c) for c in code) == 1
    markdown = [_source(c) for c in _cells(name) if c["cell_type"] == "markdown"]
    assert any("`SMOKE`" in m and "make test" in m for m in markdown)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_outputs_are_a_complete_real_run(name):
    cells = _cells(name)
    said = " ".join(_source(cells[0]).split())  # the sentence may wrap
    assert re.search(r"outputs stored here are from a run on a 2-core CPU, \d{4}-\d\d-\d\d", said)
    for cell in _code(name):
        assert cell["execution_count"] is not None, _source(cell)[:80]
        for output in cell["outputs"]:
            assert output["output_type"] != "error", _source(cell)[:80]
            text = "".join(output.get("data", {}).get("text/plain", ""))
            assert text != "None", _source(cell)[:80]
    assert any(o.get("data", {}).get("image/png") for c in _code(name) for o in c["outputs"])
    # A real run, not the smoke one: the parameter cell prints the switch.
    printed = ["".join(o.get("text", "")) for c in _code(name) for o in c["outputs"]]
    assert any("SMOKE = False" in text for text in printed)
    assert not any("SMOKE = True" in text for text in printed)


def test_make_test_sets_the_smoke_switch():
    with open(os.path.join(ROOT, "Makefile")) as f:
        lines = [line.strip() for line in f if "--nbmake" in line]
    assert lines and all(line.startswith("DELTAJAX_NOTEBOOK_SMOKE=1 ") for line in lines)
