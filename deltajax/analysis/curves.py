"""Reading events off training curves: when a metric first passes a threshold."""

from collections.abc import Sequence
from typing import Optional

import numpy as np


def first_step_above(steps_N: Sequence[int], values_N: Sequence[float],
                     threshold: float) -> Optional[int]:
    """The first step whose value exceeds threshold (strictly), or None if none does.

    steps_N must be increasing; the grokking delay is first_step_above(test accuracy) minus
    first_step_above(train accuracy)."""
    steps_N, values_N = np.asarray(steps_N), np.asarray(values_N, np.float64)
    if steps_N.shape != values_N.shape or steps_N.ndim != 1:
        raise ValueError(f"steps_N and values_N must be 1-D of one length, got shapes "
                         f"{steps_N.shape} and {values_N.shape}")
    if np.any(np.diff(steps_N) <= 0):
        raise ValueError("steps_N must be strictly increasing")
    above_N = values_N > threshold
    return int(steps_N[np.argmax(above_N)]) if above_N.any() else None
