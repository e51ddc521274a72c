"""Percentile math: hand-computed values and numpy's default (linear, type 7), which vLLM uses."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eksinfer.bench.stats import describe, nan_to_none, percentile


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),  # h = 3 * 0.5 = 1.5 -> 2 + 0.5 * (3 - 2)
        ([1.0, 2.0, 3.0, 4.0], 90, 3.7),  # h = 2.7 -> 3 + 0.7 * 1
        ([1.0, 2.0, 3.0, 4.0], 99, 3.97),  # h = 2.97
        ([10.0], 99, 10.0),
        ([0.0, 100.0], 25, 25.0),
        ([5.0, 7.0], 0, 5.0),
        ([5.0, 7.0], 100, 7.0),
    ],
)
def test_percentile_by_hand(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=200), st.floats(0, 100))
def test_percentile_matches_numpy(values, q):
    values.sort()
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-9)


def test_percentile_edges():
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_describe_and_json_nan():
    d = describe([4.0, 1.0, 3.0, 2.0])
    assert d["mean"] == 2.5
    assert d["p50"] == 2.5
    assert d["p90"] == pytest.approx(3.7)
    assert (d["min"], d["max"], d["count"]) == (1.0, 4.0, 4.0)
    empty = describe([])
    assert empty["count"] == 0.0
    assert math.isnan(empty["p99"])
    assert nan_to_none({"a": [math.nan, 1.0], "b": math.nan}) == {"a": [None, 1.0], "b": None}
