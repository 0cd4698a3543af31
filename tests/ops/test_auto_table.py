"""backend="auto" runs what experiments/tune_auto.py measured, and the report says the same."""

import pathlib
import runpy

import pytest

from deltajax.ops import auto_table
from deltajax.ops.backend import AUTO_ROWS, AutoRow, Backend, resolve
from experiments import tune_auto

REPO = pathlib.Path(__file__).resolve().parents[2]


def choices_in_markdown(text: str) -> list[AutoRow]:
    """The rows of the report's choice table."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[1] in ("True", "False"):
            chunk = None if cells[5] == "-" else int(cells[5])
            rows.append(AutoRow(cells[0], cells[1] == "True", int(cells[2]), int(cells[3]),
                                cells[4], chunk))
    return rows


@pytest.mark.parametrize("row", AUTO_ROWS, ids=lambda r: "-".join(map(str, r)))
def test_auto_resolves_every_shipped_row_to_its_measured_choice(row):
    resolved = resolve(Backend.AUTO, seq_len=row.seq_len, head_dim=row.head_dim, chunk_size=64,
                       platform=row.platform, differentiated=row.differentiated)
    assert resolved.path.value == row.path and resolved.chunk_size == row.chunk_size


def test_shipped_table_covers_the_grid_on_cpu():
    cpu = [r for r in AUTO_ROWS if r.platform == "cpu"]
    assert cpu, "no measured cpu rows: run python -m experiments.tune_auto"
    grid = {(r.differentiated, r.head_dim, r.seq_len) for r in cpu}
    assert len(grid) == len(cpu)  # one choice per point
    assert grid == {(d, K, T) for d in (False, True) for K in {r.head_dim for r in cpu}
                    for T in {r.seq_len for r in cpu}}


def test_markdown_report_has_the_shipped_table_choices():
    platforms = {r.platform for r in AUTO_ROWS}
    for platform in platforms:
        text = (REPO / "benchmarks" / "results" / f"{platform}-auto.md").read_text()
        assert "JAX " in text and "Command: `python -m experiments.tune_auto" in text
        assert choices_in_markdown(text) == [r for r in AUTO_ROWS if r.platform == platform]
    assert tuple(AutoRow(*r) for r in auto_table.ROWS) == AUTO_ROWS


def test_tuning_script_measures_and_writes_a_consistent_table_and_report(tmp_path):
    table_path = tmp_path / "auto_table.py"
    kept = AutoRow("tpu", True, 128, 4096, "pallas", 64)
    table_path.write_text(tune_auto.TABLE_HEADER + f"ROWS = (\n    {tuple(kept)!r},\n)\n")
    rows, timings = tune_auto.measure("cpu", seq_lens=[8], head_dims=[4], chunks=[4, 8, 16],
                                      B=1, H=1, repeats=1, recurrent_grad_max=4)
    # Chunk 16 would repeat chunk 8 at T=8 (the clamp); past recurrent_grad_max differentiating
    # the scan is no candidate.
    assert set(timings[False, 4, 8]) == {"recurrent", "chunked 4", "chunked 8"}
    assert set(timings[True, 4, 8]) == {"chunked 4", "chunked 8"}
    for row in rows:
        label = tune_auto.label(row.path, row.chunk_size)
        medians = timings[row.differentiated, row.head_dim, row.seq_len]
        assert medians[label] == min(medians.values())

    tune_auto.write_table(str(table_path), "cpu", rows)
    written = [AutoRow(*r) for r in runpy.run_path(str(table_path))["ROWS"]]
    assert written == sorted(rows) + [kept]
    text = tune_auto.to_markdown(rows, timings, header="# h", command="python -m x")
    assert choices_in_markdown(text) == rows
