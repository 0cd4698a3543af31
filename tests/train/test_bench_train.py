"""The training benchmark runs each device count in its own process and writes its table."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_bench_train_times_one_and_two_devices_and_writes_the_table(tmp_path):
    out = tmp_path / "cpu-train.md"
    subprocess.run(
        [sys.executable, str(REPO / "experiments" / "bench_train.py"), "--model=tiny",
         "--device_counts=1,2", "--batch=4", "--seq_len=8", "--vocab=16", "--d_model=8",
         "--steps=2", "--warmup=1", f"--out={out}"],
        check=True, cwd=REPO, capture_output=True, timeout=300)
    table = out.read_text()
    assert "JAX " in table and "global batch B=4, T=8" in table
    rows = [line for line in table.splitlines() if line.startswith("| 1 |") or
            line.startswith("| 2 |")]
    assert len(rows) == 2 and all("nan" not in row for row in rows)


def test_bench_train_rejects_an_unknown_model():
    result = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "bench_train.py"), "--model=mamba"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--model" in result.stderr
