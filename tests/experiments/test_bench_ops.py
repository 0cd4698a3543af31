"""The op benchmark runs end to end and writes its table; its FLOP counts match a hand count;
the peer harness loads a peer from the path given and checks it, or names what is missing."""

import pathlib
import subprocess
import sys

import pytest

from experiments import bench_ops

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_bench_ops_writes_a_table_with_every_cell_backend_and_the_ratio(tmp_path):
    # A subprocess: the command line is the behaviour, and absl flags are process-global.
    out = tmp_path / "cpu-ops.md"
    subprocess.run(
        [sys.executable, str(REPO / "experiments" / "bench_ops.py"), "--seq_lens=16",
         "--head_dims=8", "--gated=both", "--matmul_size=64",
         "--backends=recurrent,chunked,chunked:scanned",
         "--heads=1", "--chunk_size=16", "--repeats=1", f"--out={out}"],
        check=True, cwd=REPO, capture_output=True, timeout=600)
    table = out.read_text()
    assert "JAX " in table and "B=1, H=1, K=V in {8}" in table
    assert "Large-matmul rate of this process: " in table and "64x64 f32 jnp.dot" in table
    assert "Chunk-matmul rate: K=8: " in table and "[1, 16, K] x [1, K, K] einsum" in table
    assert "| % dot | % chunk |" in table
    for K in (8,):
        for gate in ("no", "yes"):
            for backend in ("recurrent", "chunked", "chunked:scanned"):
                assert f"| {K} | {gate} | 16 | {backend} |" in table
            assert f"| {K} | {gate} | 16 | " in table.split("fwd+bwd speed-up")[1]


def test_flop_counts_match_a_hand_count_at_a_tiny_shape():
    # T=3, C=2: two chunks (the second padded); K=3, V=2; B=1, H=2.
    C, K, V = 2, 3, 2
    forward = (2 * C * C * K  # K K^T
               + 2 * C * C * K  # Q K^T
               + 2 * C**3 / 3  # A^-1, C^3/3 multiply-adds
               + 2 * C * C * K + 2 * C * C * V  # W, U
               + 3 * 2 * C * K * V  # W S, Q S, Kd^T u
               + 2 * C * C * V)  # (D * QK) u
    assert forward == pytest.approx(24 + 24 + 16 / 3 + 24 + 16 + 72 + 16, rel=1e-12)
    assert (bench_ops.chunked_forward_flops(3, K, V, C, B=1, H=2)
            == pytest.approx(2 * 2 * forward, rel=1e-12))
    backward = (4 * 2 * C * C * V  # du, dP, dY, dA's dY U^T
                + 6 * 2 * C * C * K  # dX, dA's dX W^T, dq, dk from P, dk from K K^T (two)
                + 6 * 2 * C * K * V)  # du's K dS', dS (two), dW, d(gamma Q), d(delta K)
    assert backward == 352
    assert bench_ops.chunked_backward_flops(3, K, V, C, B=1, H=2) == 2 * 2 * backward
    assert bench_ops.recurrent_forward_flops(3, K, V, B=1, H=2) == 2 * 3 * (3 * 2 * K * V)
    assert bench_ops.recurrent_backward_flops(3, K, V, B=1, H=2) == 2 * 3 * (6 * 2 * K * V)
    assert (bench_ops.path_flops("chunked", 3, K, V, 64, B=1, H=2, differentiated=True)
            # the chunk is clamped to T's power of two, 4: one chunk
            == bench_ops.chunked_forward_flops(3, K, V, 4, B=1, H=2)
            + bench_ops.chunked_backward_flops(3, K, V, 4, B=1, H=2))
    assert (bench_ops.path_flops("scan_chunked_vjp", 3, K, V, 64, B=1, H=2, differentiated=False)
            == bench_ops.recurrent_forward_flops(3, K, V, B=1, H=2))


def test_a_bad_grid_flag_is_a_value_error_naming_it():
    assert bench_ops.positive_ints(["1024", "16"], "seq_lens") == [1024, 16]
    for bad in (["1k"], ["0"], []):
        with pytest.raises(ValueError, match="--seq_lens: positive integers"):
            bench_ops.positive_ints(bad, "seq_lens")


def test_bench_peers_names_a_missing_or_unknown_peer(tmp_path, monkeypatch):
    from experiments import bench_peers
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_peers prepends --peers_path
    with pytest.raises(ValueError, match=r"'levanter' needs levanter/layers/gated_deltanet.py"):
        bench_peers.load_peers(["levanter"], [str(tmp_path)])
    with pytest.raises(ValueError, match="--peers: unknown peer 'fla'"):
        bench_peers.load_peers(["fla"], [str(tmp_path)])


_FAKE_EJKERNEL = '''
import jax.numpy as jnp
from deltajax.ops import delta_rule


def _chunk_gdr_fwd(query, key, value, beta, decay, chunk_size, use_qk_l2norm):
    # ejkernel's layout, [B, H, T, ...], around the recurrent specification
    t = lambda x: jnp.swapaxes(x, 1, 2)
    o, s = delta_rule(t(query), t(key), t(value), t(beta), gate=t(decay), backend="recurrent",
                      return_final_state=True)
    return t(o), s


def _chunk_gdr_fwd_neumann(query, key, value, beta, decay, chunk_size, state, use_qk_l2norm):
    return _chunk_gdr_fwd(query, key, value, beta, decay, chunk_size, use_qk_l2norm)
'''


def test_bench_peers_loads_a_peer_from_the_path_and_checks_it_in_its_layout(tmp_path,
                                                                           monkeypatch):
    from experiments import bench_peers
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder = tmp_path / "ejkernel" / "kernels" / "_xla" / "gated_delta_rule"
    folder.mkdir(parents=True)
    (folder / "_xla_impl_fwd.py").write_text(_FAKE_EJKERNEL)
    peers = bench_peers.load_peers(["ejkernel_xla"], [str(tmp_path)])
    errors = bench_peers.check(peers, B=1, T=20, H=2, D=8, chunk_size=8)
    assert set(errors["ejkernel_xla"]) == {"o", "dq", "dk", "dv", "dbeta", "dgate"}
    assert max(errors["ejkernel_xla"].values()) < 1e-5
    for name in ("_deltajax_peer_ejkernel_gdr._xla_impl_fwd", "_deltajax_peer_ejkernel_gdr"):
        sys.modules.pop(name, None)
