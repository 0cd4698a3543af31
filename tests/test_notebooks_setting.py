"""The notebooks' set-up: a Colab install cell that is a no-op in a clone and fetches the
notebook's own repository elsewhere, the SMOKE switch that `make test` sets (nbmake then executes
each notebook at a small setting), and stored outputs from a real run. Reads the .ipynb JSON;
executes only the install cell."""

import http.server
import json
import os
import re
import socket
import subprocess
import threading
import urllib.parse

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


def _refuse(*args, **kwargs):
    raise AssertionError(f"the install cell ran {args}, which it must not here")


def _install_cell() -> str:
    return _source(_code(NOTEBOOKS[0])[0])


def test_every_notebook_has_the_same_install_cell():
    """So the tests of one install cell below cover all of them."""
    assert all(_source(_code(name)[0]) == _install_cell() for name in NOTEBOOKS)


def test_install_cell_installs_only_when_not_importable_with_the_accelerator_extra():
    install = _install_cell()
    assert 'importlib.util.find_spec("deltajax") is None' in install
    assert '"pip", "install"' in install
    assert '"[gpu]"' in install and '"[tpu]"' in install
    assert "OWNER" not in install  # no placeholder for a user to edit


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_install_cell_is_a_no_op_in_a_clone(name, monkeypatch):
    """Run from notebooks/ as nbmake does: no clone, no pip; the clone goes on sys.path."""
    monkeypatch.setattr(subprocess, "run", _refuse)
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


def _run_install_cell(cwd, monkeypatch, environ):
    """Executes the install cell in `cwd` (no clone above it) with only `environ` of the
    variables it reads set; returns its namespace."""
    for key in ("COLAB_JUPYTER_IP", "KMP_TARGET_PORT", "DELTAJAX_REPO_URL", "DELTAJAX_REPO_REF"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    cwd.mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    namespace = {}
    exec(_install_cell(), namespace)  # noqa: S102  (the notebooks' own cell)
    return namespace


def _git(*args, cwd):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def source_repository(tmp_path_factory):
    """A repository shaped like this one, two commits on main and a branch with a slash."""
    path = tmp_path_factory.mktemp("source")
    _git("init", "-q", "-b", "main", cwd=path)
    (path / "deltajax").mkdir()
    (path / "deltajax" / "__init__.py").write_text("")
    (path / "pyproject.toml").write_text("[project]\nname = 'deltajax'\n")
    (path / "version").write_text("first\n")
    _git("add", ".", cwd=path)
    _git("commit", "-qm", "first", cwd=path)
    first = _git("rev-parse", "HEAD", cwd=path)
    (path / "version").write_text("second\n")
    _git("commit", "-qam", "second", cwd=path)
    _git("branch", "feature/x", first, cwd=path)
    return path, first


@pytest.mark.parametrize("ref, version", [("", "second"), ("main", "second"),
                                          ("feature/x", "first"), ("first-commit", "first")])
def test_install_cell_fetches_the_named_repository_and_revision(
        ref, version, source_repository, tmp_path, monkeypatch):
    path, first = source_repository
    ref = first if ref == "first-commit" else ref
    namespace = _run_install_cell(tmp_path / "content", monkeypatch,
                                  {"DELTAJAX_REPO_URL": path.as_uri(), "DELTAJAX_REPO_REF": ref})
    clone = tmp_path / "content" / "deltajax-repo"
    assert namespace["REPO_ROOT"] == str(clone)
    assert (clone / "version").read_text() == f"{version}\n"
    # Run again (a second notebook, or the cell re-run): the fetched clone is found, no git.
    monkeypatch.setattr(subprocess, "run", _refuse)
    assert _run_install_cell(tmp_path / "content", monkeypatch, {})["REPO_ROOT"] == str(clone)


class _ColabSessions(http.server.BaseHTTPRequestHandler):
    """Colab's kernel-side Jupyter server: /api/sessions names the open notebook."""
    notebook = ""

    def do_GET(self):  # noqa: N802  (http.server's name)
        assert self.path == "/api/sessions"
        body = json.dumps([{"name": "recall.ipynb", "type": "notebook",
                            "path": "fileId=" + urllib.parse.quote(self.notebook, safe="")}])
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def colab_sessions():
    """Serves a Colab session list; yields a function that sets the notebook's address and
    returns the environment Colab would give the kernel."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _ColabSessions)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def opened_from(address):
        _ColabSessions.notebook = address
        return {"COLAB_JUPYTER_IP": "127.0.0.1", "KMP_TARGET_PORT": str(server.server_port)}

    yield opened_from
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("address, url, revision", [
    ("https://github.com/someone/deltajax/blob/main/notebooks/recall.ipynb",
     "https://github.com/someone/deltajax", "main"),
    ("https://github.com/a-b/fork.of.it/blob/feature/x/notebooks/state_tracking.ipynb",
     "https://github.com/a-b/fork.of.it", "feature/x"),
    ("https://github.com/someone/deltajax/blob/0123abc/notebooks/grokking.ipynb",
     "https://github.com/someone/deltajax", "0123abc"),
])
def test_install_cell_in_colab_fetches_the_repository_the_notebook_was_opened_from(
        address, url, revision, colab_sessions, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kwargs: calls.append(args))
    namespace = _run_install_cell(tmp_path / "content", monkeypatch, colab_sessions(address))
    assert ["git", "-C", "deltajax-repo", "fetch", "-q", "--depth=1", url, revision] in calls
    assert namespace["REPO_ROOT"] == str(tmp_path / "content" / "deltajax-repo")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("address", [
    "1AbCdEfGhIjKlMnOpQrStUvWxYz",  # a copy saved to Drive
    "https://github.com/someone/deltajax/blob/main/elsewhere/recall.ipynb",
    None,  # not in Colab
    "no server",  # Colab, but its session server is not where it was
])
def test_install_cell_names_the_variable_to_set_when_the_repository_is_unknown(
        address, colab_sessions, tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", _refuse)
    if address == "no server":
        address, environ = None, {"COLAB_JUPYTER_IP": "127.0.0.1",
                                  "KMP_TARGET_PORT": str(_closed_port())}
    else:
        environ = colab_sessions(address) if address else {}
    with pytest.raises(RuntimeError, match="DELTAJAX_REPO_URL") as raised:
        _run_install_cell(tmp_path / "content", monkeypatch, environ)
    assert repr(address) in str(raised.value)
