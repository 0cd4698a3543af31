"""Which path computes delta_rule: the Backend type, chunk_size's one rule, and the resolver.

Every string a user can pass as `backend` is parsed here, `chunk_size` is checked and clamped
here, and `DELTAJAX_PALLAS_TARGET` is read here; everything below receives concrete values.
"""

import enum
import os

import numpy as np

PALLAS_TARGET_ENV = "DELTAJAX_PALLAS_TARGET"


class Backend(str, enum.Enum):
    """A requested path. str-valued, so `Backend.CHUNKED == "chunked"` and configs hold strings."""

    AUTO = "auto"                          # the measured fastest for the platform and the call
    RECURRENT = "recurrent"                # token-by-token lax.scan: the specification
    CHUNKED = "chunked"                    # chunkwise WY/UT form in XLA, hand-written VJP
    SCAN_CHUNKED_VJP = "scan_chunked_vjp"  # the scan's forward, the chunked form's VJP
    PALLAS = "pallas"                      # Pallas kernels (Triton on GPU, Mosaic on TPU)

    def __str__(self) -> str:
        return self.value


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
