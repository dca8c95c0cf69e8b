"""Percentiles and summaries of measured samples (hand-written: numpy is not in the main venv)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Sequence[float], scale: float = 1.0) -> dict[str, float]:
    """n, p50, p99, mean, min, max of ``values`` multiplied by ``scale`` (e.g. 1e3 for s → ms)."""
    if not values:
        return {"n": 0}
    scaled = [v * scale for v in values]
    return {
        "n": len(scaled),
        "p50": percentile(scaled, 50),
        "p99": percentile(scaled, 99),
        "mean": sum(scaled) / len(scaled),
        "min": min(scaled),
        "max": max(scaled),
    }
