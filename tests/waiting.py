"""Waiting in tests without betting on the machine's speed.

A test waits for the condition it needs, polling it until a generous deadline, instead of sleeping a
fixed time and hoping the work is done: on a fast machine the wait ends at once, on a slow or busy one it
takes longer, and only a condition that never comes fails. Timing itself is tested with `FakeClock`,
which code under test takes through its `clock=` parameter and which moves only when the test says.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

DEADLINE_S = 20.0  # far beyond any healthy wait; reached only when the condition never comes
POLL_S = 0.01


async def until(
    check: Callable[[], object | Awaitable[object]], timeout_s: float = DEADLINE_S, what: str = ""
) -> None:
    """Polls `check` (plain or async, e.g. an HTTP read) on the event loop until it is true; fails after
    `timeout_s` naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout_s} s: {what or check}")
        await asyncio.sleep(POLL_S)


def until_sync(check: Callable[[], object], timeout_s: float = DEADLINE_S, what: str = "") -> None:
    """`until` for code outside an event loop (subprocesses, threads)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout_s} s: {what or check}")
        time.sleep(POLL_S * 5)


class FakeClock:
    """A monotonic clock that advances only when told: `clock()` reads it, `advance(s)` moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
