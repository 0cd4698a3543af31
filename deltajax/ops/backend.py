"""Which path computes delta_rule: the Backend type, chunk_size's one rule, and the resolver.

Every string a user can pass as `backend` is parsed here, `chunk_size` is checked and clamped
here, and `DELTAJAX_PALLAS_TARGET` is read here; everything below receives concrete values.
The members and how `auto` chooses are tabled in deltajax/ops/README.md.
"""

import dataclasses
import enum
import math
import os
from typing import NamedTuple, Optional

import numpy as np

from deltajax.ops import auto_table

PALLAS_TARGET_ENV = "DELTAJAX_PALLAS_TARGET"


class Backend(enum.StrEnum):
    """A requested path. str-valued, so `Backend.CHUNKED == "chunked"` and configs hold strings."""

    AUTO = "auto"                          # the measured fastest for the platform and the call
    RECURRENT = "recurrent"                # token-by-token lax.scan: the specification
    CHUNKED = "chunked"                    # chunkwise WY/UT form in XLA, hand-written VJP
    SCAN_CHUNKED_VJP = "scan_chunked_vjp"  # the scan's forward, the chunked form's VJP
    PALLAS = "pallas"                      # Pallas kernels (Triton on GPU, Mosaic on TPU)


def parse_backend(value, name: str = "backend") -> Backend:
    """`value` as a Backend; a ValueError naming `name` and the choices otherwise."""
    try:
        return Backend(value)
    except ValueError:
        choices = ", ".join(repr(b.value) for b in Backend)
        raise ValueError(f"{name} must be one of {choices}, got {value!r}") from None


def check_chunk_size(value, name: str = "chunk_size") -> int:
    """The one validation of chunk_size: a positive power of two."""
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
            or value & (value - 1)):
        raise ValueError(f"{name} must be a positive power of two, got {value!r}")
    return int(value)


def pallas_target(platform: str) -> tuple[str, bool]:
    """(kernel set "gpu" | "tpu", interpret) of the Pallas path on `platform`.

    Native on GPU and TPU; on CPU the kernels are interpreted, the GPU set unless
    DELTAJAX_PALLAS_TARGET=tpu asks for the TPU set in TPU interpret mode.
    """
    if platform == "tpu":
        return "tpu", False
    if platform in ("gpu", "cuda", "rocm"):
        return "gpu", False
    target = os.environ.get(PALLAS_TARGET_ENV, "gpu")
    if target not in ("gpu", "tpu"):
        raise ValueError(f"{PALLAS_TARGET_ENV} must be 'gpu' or 'tpu', got {target!r}")
    return target, True


def clamp_chunk(chunk_size: int, seq_len: int, min_chunk: int = 1) -> int:
    """The one clamp rule: a short sequence gets the smallest power of two covering it rather
    than padding up to chunk_size, but never less than the path's smallest chunk."""
    return max(min_chunk, min(chunk_size, 1 << (seq_len - 1).bit_length()))


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A concrete path with everything it needs, as delta_rule calls it.

    path: RECURRENT, CHUNKED or PALLAS. chunk_size: the clamped chunk (None for RECURRENT).
    target: the Pallas kernel set, "gpu" or "tpu" (None off PALLAS). interpret: run the Pallas
    kernels in interpret mode (CPU).
    """

    path: Backend
    chunk_size: Optional[int] = None
    target: Optional[str] = None
    interpret: bool = False


def _canonical_platform(platform: str) -> str:
    return "gpu" if platform in ("cuda", "rocm") else platform


def resolve(backend: Backend, *, seq_len: int, head_dim: int, chunk_size: int, platform: str,
            differentiated: bool, min_chunk: Optional[int] = None) -> Resolved:
    """The concrete path of `backend` for one call.

    seq_len, head_dim: T and K of the call. chunk_size: the requested chunk (already checked).
    platform: jax.default_backend(). differentiated: whether the call's VJP is taken.
    min_chunk: the Pallas kernels' smallest chunk; PALLAS only. None: that of the target's
      default BlockSizes.
    """
    platform = _canonical_platform(platform)

    def pallas(chunk):
        target, interpret = pallas_target(platform)
        smallest = min_chunk
        if smallest is None:
            # Imported here so that `import deltajax` on CPU does not load the Pallas kernels.
            from pallas_kernels.block_sizes import BlockSizes
            smallest = BlockSizes.for_target(target).min_chunk
        return Resolved(Backend.PALLAS, clamp_chunk(chunk, seq_len, smallest), target, interpret)

    match backend:
        case Backend.RECURRENT:
            return Resolved(Backend.RECURRENT)
        case Backend.CHUNKED:
            return Resolved(Backend.CHUNKED, clamp_chunk(chunk_size, seq_len))
        case Backend.PALLAS:
            return pallas(chunk_size)
        case Backend.SCAN_CHUNKED_VJP:
            # The scan is the cheap forward; differentiating it is the slow path it avoids.
            if not differentiated:
                return Resolved(Backend.RECURRENT)
            return Resolved(Backend.CHUNKED, clamp_chunk(chunk_size, seq_len))
        case Backend.AUTO:
            if seq_len == 1:  # a decode step is one recurrent update
                return Resolved(Backend.RECURRENT)
            row = auto_choice(platform, differentiated, head_dim, seq_len)
            if row is None:  # nothing measured on this platform: the native kernels
                return pallas(chunk_size)
            if row.path == Backend.RECURRENT.value:
                return Resolved(Backend.RECURRENT)
            if row.path == Backend.PALLAS.value:
                return pallas(row.chunk_size)
            return Resolved(Backend.CHUNKED, clamp_chunk(row.chunk_size, seq_len))
        case _:
            raise ValueError(f"backend must be a Backend, got {backend!r}")


class AutoRow(NamedTuple):
    """One measured choice of `auto`: at (platform, differentiated, head_dim), for sequence
    lengths up to seq_len (and above the next smaller measured one), run path at chunk_size."""

    platform: str
    differentiated: bool
    head_dim: int
    seq_len: int
    path: str
    chunk_size: Optional[int]


AUTO_ROWS = tuple(AutoRow(*row) for row in auto_table.ROWS)


def auto_choice(platform: str, differentiated: bool, head_dim: int,
                seq_len: int) -> Optional[AutoRow]:
    """The measured row for a call, or None when nothing was measured on `platform`.

    head_dim picks the measured head dimension nearest in ratio (ties: the smaller); seq_len the
    smallest measured length >= seq_len (the largest one beyond the grid).
    """
    rows = [r for r in AUTO_ROWS
            if r.platform == _canonical_platform(platform) and r.differentiated == differentiated]
    if not rows:
        return None
    K = min({r.head_dim for r in rows}, key=lambda k: (abs(math.log2(k / head_dim)), k))
    rows = sorted((r for r in rows if r.head_dim == K), key=lambda r: r.seq_len)
    return next((r for r in rows if r.seq_len >= seq_len), rows[-1])
