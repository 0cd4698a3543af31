"""The op benchmark runs end to end and writes its table."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_bench_ops_writes_a_table_with_every_backend_asked_for_and_the_ratio(tmp_path):
    # A subprocess: the command line is the behaviour, and absl flags are process-global.
    out = tmp_path / "cpu-ops.md"
    subprocess.run(
        [sys.executable, str(REPO / "experiments" / "bench_ops.py"), "--seq_lens=16",
         "--backends=recurrent,chunked,scan_chunked_vjp,auto", "--heads=1", "--head_dim=8",
         "--chunk_size=16", "--repeats=1", f"--out={out}"],
        check=True, cwd=REPO, capture_output=True, timeout=600)
    table = out.read_text()
    assert "JAX " in table and "B=1, H=1, K=V=8" in table
    for backend in ("recurrent", "chunked", "scan_chunked_vjp", "auto"):
        assert f"| 16 | {backend} |" in table
    assert "fwd+bwd speed-up" in table

