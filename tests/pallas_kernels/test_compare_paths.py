"""experiments/compare_paths.py on a tiny config: errors are small and the table is written."""

from experiments import compare_paths


def test_compare_paths_reports_errors_and_timings():
    cfg = compare_paths.Config(batch=1, seq_len=40, heads=2, head_dim=16, dtype="float32",
                               chunk_size=16, gate=True)
    report = compare_paths.compare(cfg, ["chunked", "pallas"], repeats=1, others=True)
    assert report["reference"] == "recurrent"
    assert set(report["timings"]) == {"chunked", "pallas"}
    for backend in ("chunked", "pallas"):
        errs = report["errors"][backend]
        assert {"o", "final_state", "dq", "dk", "dv", "dbeta", "dgate"} <= set(errs)
        assert all(relative < 1e-4 for _, relative in errs.values()), (backend, errs)
    table = compare_paths.to_markdown(report, [report], header="# test", peak_tflops=None)
    assert "| delta_rule pallas |" in table and "speed-up over XLA chunked" in table
    assert "decode step" in table
