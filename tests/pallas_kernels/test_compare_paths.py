"""experiments/compare_paths.py on a tiny config: errors are small and the table is written."""

import types

from experiments import compare_paths
from pallas_kernels.block_sizes import BlockSizes


def test_compare_paths_reports_errors_and_timings():
    cfg = compare_paths.Config(batch=1, seq_len=40, heads=2, head_dim=32, dtype="float32",
                               chunk_size=16, gate=True)
    tiles = BlockSizes(block_v=16, num_warps=2)   # two value blocks: a tuning run's choice
    report = compare_paths.compare(cfg, ["chunked", "pallas"], repeats=1, others=True,
                                   block_sizes=tiles)
    assert report["reference"] == "recurrent"
    assert set(report["timings"]) == {"chunked", "pallas"}
    for backend in ("chunked", "pallas"):
        errs = report["errors"][backend]
        assert {"o", "final_state", "dq", "dk", "dv", "dbeta", "dgate"} <= set(errs)
        assert all(relative < 1e-4 for _, relative in errs.values()), (backend, errs)
    table = compare_paths.to_markdown(report, [report], header="# test", peak_tflops=None)
    assert "| delta_rule pallas |" in table and "speed-up over XLA chunked" in table
    assert "decode step" in table and f"Pallas tiles: {tiles}" in table


def test_block_sizes_from_flags():
    flags = lambda **given: types.SimpleNamespace(**{**dict(
        block_v=None, num_warps=None, num_warps_parallel=None, num_stages=None), **given})
    assert compare_paths.block_sizes_from_flags(flags(), "gpu") is None
    assert (compare_paths.block_sizes_from_flags(flags(block_v=0, num_warps=8), "gpu")
            == BlockSizes(block_v=None, num_warps=8))
    assert compare_paths.block_sizes_from_flags(flags(num_stages=3), "tpu") == BlockSizes(
        block_v=None, num_stages=3, solve_precision=BlockSizes.tpu().solve_precision)
