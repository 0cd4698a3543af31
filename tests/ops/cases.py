"""Random inputs for the op tests: fresh normal draws, never zeros."""

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class Case:
    T: int
    chunk_size: int = 32
    gate: bool = False
    initial_state: bool = False
    segments: bool = False
    beta_max: float = 1.0
    normalize_k: bool = True
    B: int = 2
    H: int = 2
    K: int = 16
    V: int = 12
    seed: int = 0

    @property
    def id(self) -> str:
        flags = [name for name in ("gate", "initial_state", "segments") if getattr(self, name)]
        flags += [] if self.normalize_k else ["raw_k"]
        return f"T{self.T}-C{self.chunk_size}-beta{self.beta_max:g}-" + ("+".join(flags) or "plain")


def make_inputs(case: Case) -> tuple[dict, Optional[np.ndarray]]:
    """float64 inputs of the op (a dict of its differentiable arrays) and segment_ids."""
    rng = np.random.default_rng(case.seed)
    B, T, H, K, V = case.B, case.T, case.H, case.K, case.V
    k = rng.normal(size=(B, T, H, K))
    if case.normalize_k:
        k /= np.linalg.norm(k, axis=-1, keepdims=True)
    inputs = dict(
        q=rng.normal(size=(B, T, H, K)),
        k=k,
        v=rng.normal(size=(B, T, H, V)),
        beta=rng.uniform(0.0, case.beta_max, size=(B, T, H)),
    )
    if case.gate:
        inputs["gate"] = np.log(rng.uniform(0.8, 1.0, size=(B, T, H)))
    if case.initial_state:
        inputs["initial_state"] = rng.normal(size=(B, H, K, V))
    segment_ids = None
    if case.segments:
        # Segment starts anywhere, including length-1 segments and starts on chunk boundaries.
        starts = rng.random(size=(B, T)) < 0.06
        starts[:, min(T - 1, case.chunk_size)] = True
        starts[:, 0] = False
        segment_ids = np.cumsum(starts, axis=1).astype(np.int32)
    return inputs, segment_ids


def cotangents(case: Case) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(case.seed + 1)
    return (rng.normal(size=(case.B, case.T, case.H, case.V)),
            rng.normal(size=(case.B, case.H, case.K, case.V)))
