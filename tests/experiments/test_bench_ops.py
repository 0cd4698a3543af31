"""The op benchmark runs end to end and writes its table."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_bench_ops_writes_a_table_with_both_backends_and_their_ratio(tmp_path):
    out = tmp_path / "cpu-ops.md"
    subprocess.run(
        [sys.executable, str(REPO / "experiments" / "bench_ops.py"), "--seq_lens=16,32",
         "--heads=1", "--head_dim=8", "--chunk_size=16", "--repeats=1", f"--out={out}"],
        check=True, cwd=REPO, capture_output=True, timeout=600)
    table = out.read_text()
    assert "JAX " in table and "B=1, H=1, K=V=8" in table
    for row in ("| 16 | recurrent |", "| 16 | chunked |", "| 32 | recurrent |", "| 32 | chunked |"):
        assert row in table
    assert "fwd+bwd speed-up" in table
