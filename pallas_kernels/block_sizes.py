"""Tile choices of the delta-rule kernels: one frozen value that callers and tuning scripts pass.

As in JAX's own Pallas ops (`ops/tpu/flash_attention.BlockSizes`), every knob that changes speed
but not the function computed lives here, never in module constants or environment variables.
Frozen, so it is hashable: it is a static (nondiff) argument of the kernels' custom_vjp and of
jit. The defaults are first guesses, not yet tuned on a GPU or TPU.
"""

import dataclasses
from typing import Optional

import jax

TARGETS = ("gpu", "tpu")


def _is_power_of_two(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1 and not x & (x - 1)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """How the kernels tile the work. `BlockSizes()` is the GPU default.

    block_v: value columns per program of the GPU state passes and of chunk_grads; None = all of
      V. The update is column-wise in V, so this trades [K, block_v] registers per program for
      recomputing the chunk's [C, C] factors once per block. The TPU kernels always take the
      whole V (their state sits in VMEM, not in registers) and ignore it.
    num_warps: Triton warps per program of the sequential state passes (GPU only).
    num_warps_parallel: Triton warps per program of the chunk-parallel kernels, prepare and
      chunk_grads (GPU only); chunk_grads holds S and dS tiles at once, hence more registers.
    num_stages: Triton software-pipelining stages (GPU only).
    min_chunk: the smallest chunk the kernels accept: 16 is a Triton dot tile (tl.dot needs
      16 x 16); Mosaic needs a multiple of 8 sublanes. The op's resolver clamps chunk_size to it.
    solve_precision: precision of the UT solve's dots under bf16 inputs: HIGH (TF32 tensor
      cores) on GPU, HIGHEST on TPU, where Mosaic has only DEFAULT and HIGHEST. f32 inputs use
      the exact row-by-row solve whatever this says.
    """

    block_v: Optional[int] = 64   # a [128, 64] f32 state is 32 KiB of registers: more spills
    num_warps: int = 4
    num_warps_parallel: int = 8
    num_stages: int = 2
    min_chunk: int = 16
    solve_precision: jax.lax.Precision = jax.lax.Precision.HIGH

    def __post_init__(self):
        if self.block_v is not None and not (_is_power_of_two(self.block_v)
                                             and self.block_v >= 16):
            raise ValueError(f"block_v must be None or a power of two >= 16 (a Triton dot tile), "
                             f"got {self.block_v!r}")
        for name in ("num_warps", "num_warps_parallel"):
            value = getattr(self, name)
            if not (_is_power_of_two(value) and value <= 32):
                raise ValueError(f"{name} must be a power of two in [1, 32], got {value!r}")
        stages = self.num_stages
        if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
            raise ValueError(f"num_stages must be a positive int, got {self.num_stages!r}")
        if not (_is_power_of_two(self.min_chunk) and self.min_chunk >= 8):
            raise ValueError(f"min_chunk must be a power of two >= 8 (TPU sublanes), "
                             f"got {self.min_chunk!r}")
        if not isinstance(self.solve_precision, jax.lax.Precision):
            raise ValueError(f"solve_precision must be a jax.lax.Precision, "
                             f"got {self.solve_precision!r}")

    @classmethod
    def gpu(cls) -> "BlockSizes":
        return cls()

    @classmethod
    def tpu(cls) -> "BlockSizes":
        return cls(block_v=None, solve_precision=jax.lax.Precision.HIGHEST)

    @classmethod
    def for_target(cls, target: str) -> "BlockSizes":
        """The default of the kernel set `target` ("gpu" | "tpu")."""
        match target:
            case "gpu":
                return cls.gpu()
            case "tpu":
                return cls.tpu()
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
