"""Percentiles and the summary statistics every latency metric is reported with.

Percentiles use linear interpolation between closest ranks (Hyndman & Fan type 7), the default of
`numpy.percentile`, which is what `vllm bench serve` calls, so our P50/P90/P99 equal vLLM's on
the same samples.
For sorted samples x[0..n-1] and q in [0, 100]: h = (n - 1) * q / 100, P = x[floor h] + (h - floor h) *
(x[floor h + 1] - x[floor h]).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values; NaN when there are none."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} outside [0, 100]")
    n = len(sorted_values)
    if n == 0:
        return math.nan
    h = (n - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def describe(values: Iterable[float]) -> dict[str, float]:
    """mean, p50, p90, p99 (plus min, max, count) of the values; no values gives NaNs and count 0."""
    data = sorted(values)
    out: dict[str, float] = {
        "mean": math.fsum(data) / len(data) if data else math.nan,
    }
    for q in PERCENTILES:
        out[f"p{q:g}"] = percentile(data, q)
    out["min"] = data[0] if data else math.nan
    out["max"] = data[-1] if data else math.nan
    out["count"] = float(len(data))
    return out


def nan_to_none(value: object) -> object:
    """JSON has no NaN: turn NaN floats (recursively) into null so the output file is standard JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return value
