"""The resolver, directly: every Backend member on every platform, pure Python, no compiles."""

import numpy as np
import pytest

from deltajax.ops import backend as backend_lib
from deltajax.ops.backend import (
    PALLAS_TARGET_ENV,
    Backend,
    Resolved,
    check_chunk_size,
    clamp_chunk,
    parse_backend,
    resolve,
)

PLATFORMS = ("cpu", "gpu", "cuda", "rocm", "tpu")
TABLE = (  # a stand-in measured table: cpu rows only, as today
    backend_lib.AutoRow("cpu", False, 64, 128, "recurrent", None),
    backend_lib.AutoRow("cpu", False, 64, 1024, "chunked", 32),
    backend_lib.AutoRow("cpu", False, 128, 1024, "chunked", 64),
    backend_lib.AutoRow("cpu", True, 64, 1024, "chunked", 32),
    backend_lib.AutoRow("cpu", True, 128, 1024, "chunked", 16),
)


@pytest.fixture
def table(monkeypatch):
    monkeypatch.setattr(backend_lib, "AUTO_ROWS", TABLE)


def call(backend, *, T=300, K=64, chunk=64, platform="cpu", differentiated=False, min_chunk=16):
    return resolve(backend, seq_len=T, head_dim=K, chunk_size=chunk, platform=platform,
                   differentiated=differentiated, min_chunk=min_chunk)


def test_clamp_rule_covers_the_sequence_with_a_power_of_two_and_respects_the_minimum():
    assert [clamp_chunk(64, T) for T in (1, 2, 3, 7, 8, 9, 64, 65, 1000)] == \
        [1, 2, 4, 8, 8, 16, 64, 64, 64]
    assert [clamp_chunk(64, T, min_chunk=16) for T in (1, 7, 20, 1000)] == [16, 16, 32, 64]
    assert clamp_chunk(8, 1000, min_chunk=16) == 16


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("differentiated", [False, True])
def test_explicit_members_resolve_alike_on_every_platform(platform, differentiated, monkeypatch):
    monkeypatch.delenv(PALLAS_TARGET_ENV, raising=False)
    native = platform != "cpu"
    target = "tpu" if platform == "tpu" else "gpu"
    kw = dict(platform=platform, differentiated=differentiated)
    assert call(Backend.RECURRENT, **kw) == Resolved(Backend.RECURRENT)
    assert call(Backend.CHUNKED, T=20, **kw) == Resolved(Backend.CHUNKED, 32)
    assert call(Backend.CHUNKED, T=20, chunk=8, **kw) == Resolved(Backend.CHUNKED, 8)
    assert call(Backend.PALLAS, T=20, **kw) == Resolved(Backend.PALLAS, 32, target, not native)
    assert call(Backend.PALLAS, T=5, **kw) == Resolved(Backend.PALLAS, 16, target, not native)
    expected = (Resolved(Backend.CHUNKED, 64) if differentiated else Resolved(Backend.RECURRENT))
    assert call(Backend.SCAN_CHUNKED_VJP, **kw) == expected


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("differentiated", [False, True])
def test_auto_decodes_one_token_with_the_recurrent_step(platform, differentiated, table):
    assert call(Backend.AUTO, T=1, platform=platform,
                differentiated=differentiated) == Resolved(Backend.RECURRENT)


@pytest.mark.parametrize("platform,target", [("gpu", "gpu"), ("cuda", "gpu"), ("rocm", "gpu"),
                                             ("tpu", "tpu")])
def test_auto_runs_native_pallas_at_the_requested_chunk_where_nothing_is_measured(
        platform, target, table):
    for differentiated in (False, True):
        assert call(Backend.AUTO, chunk=32, platform=platform, differentiated=differentiated) \
            == Resolved(Backend.PALLAS, 32, target, False)


def test_auto_on_cpu_reads_the_table_by_length_head_dim_and_differentiation(table):
    # T picks the first row whose length covers it; beyond the grid, the last row.
    assert call(Backend.AUTO, T=2) == Resolved(Backend.RECURRENT)
    assert call(Backend.AUTO, T=128) == Resolved(Backend.RECURRENT)
    assert call(Backend.AUTO, T=129) == Resolved(Backend.CHUNKED, 32)
    assert call(Backend.AUTO, T=100_000) == Resolved(Backend.CHUNKED, 32)
    assert call(Backend.AUTO, T=300, differentiated=True) == Resolved(Backend.CHUNKED, 32)
    # K picks the nearest measured head dimension in ratio.
    assert call(Backend.AUTO, T=300, K=128) == Resolved(Backend.CHUNKED, 64)
    assert call(Backend.AUTO, T=300, K=100) == Resolved(Backend.CHUNKED, 64)
    assert call(Backend.AUTO, T=300, K=16) == Resolved(Backend.CHUNKED, 32)
    assert call(Backend.AUTO, T=300, K=128, differentiated=True) == Resolved(Backend.CHUNKED, 16)
    # The measured chunk replaces the requested one and is clamped like any other.
    assert call(Backend.AUTO, T=20, K=128, chunk=8) == Resolved(Backend.CHUNKED, 32)


def test_pallas_target_override_is_read_on_cpu_only(monkeypatch):
    monkeypatch.setenv(PALLAS_TARGET_ENV, "tpu")
    assert call(Backend.PALLAS, platform="cpu") == Resolved(Backend.PALLAS, 64, "tpu", True)
    assert call(Backend.PALLAS, platform="gpu") == Resolved(Backend.PALLAS, 64, "gpu", False)
    monkeypatch.setenv(PALLAS_TARGET_ENV, "cuda")
    with pytest.raises(ValueError, match=PALLAS_TARGET_ENV):
        call(Backend.PALLAS, platform="cpu")


def test_backend_strings_parse_to_members_and_anything_else_is_named_in_the_error():
    assert [parse_backend(b.value) for b in Backend] == list(Backend)
    assert parse_backend(Backend.CHUNKED) is Backend.CHUNKED
    assert Backend.SCAN_CHUNKED_VJP == "scan_chunked_vjp" and str(Backend.AUTO) == "auto"
    assert call("chunked", T=20) == Resolved(Backend.CHUNKED, 32)  # str members match too
    message = r"model.backend must be one of 'auto', .*got 'scan_or_chunked'"
    with pytest.raises(ValueError, match=message):
        parse_backend("scan_or_chunked", "model.backend")


@pytest.mark.parametrize("bad", [0, -4, 48, 2.0, True, "64", None])
def test_chunk_size_must_be_a_positive_power_of_two(bad):
    with pytest.raises(ValueError, match="chunk_size must be a positive power of two"):
        check_chunk_size(bad)


def test_chunk_size_check_returns_a_python_int():
    value = check_chunk_size(np.int64(32))
    assert value == 32 and type(value) is int
