"""Rate-limited warnings with an injected clock: first one through, then one per interval per key, with the
count of what was held back."""

from __future__ import annotations

import logging

import pytest

from eksinfer.ratelog import RateLimitedLog
from tests.waiting import FakeClock


def test_one_line_per_key_and_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    warn = RateLimitedLog(logging.getLogger("t"), interval_s=10.0, clock=clock)
    caplog.set_level(logging.WARNING)
    assert warn.warning("a", "engine %s failed", "e1")
    assert not warn.warning("a", "engine %s failed", "e1")
    assert not warn.warning("a", "engine %s failed", "e1")
    assert warn.warning("b", "other %d", 2)  # another key is not held back
    clock.advance(10.0)
    assert warn.warning("a", "engine %s failed", "e1")
    assert [r.getMessage() for r in caplog.records] == [
        "engine e1 failed",
        "other 2",
        "engine e1 failed (2 more since the last)",
    ]


def test_keys_are_bounded() -> None:
    warn = RateLimitedLog(logging.getLogger("t"), max_keys=3, clock=lambda: 0.0)
    for i in range(100):
        warn.warning(f"k{i}", "x")
    assert len(warn._last) == 3
