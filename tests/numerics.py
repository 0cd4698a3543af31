"""Comparison helpers shared by the tests."""

import numpy as np


def relative_error(actual, expected) -> float:
    """||actual - expected|| / ||expected|| in float64; fails on any non-finite actual value."""
    actual = np.asarray(actual, np.float64)
    assert np.all(np.isfinite(actual)), "non-finite values"
    expected = np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))
