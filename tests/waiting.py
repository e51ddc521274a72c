"""Waiting in tests without betting on the machine's speed.

A test waits for the condition it needs, polling it until a generous deadline, instead of sleeping a
fixed time and hoping the work is done: on a fast machine the wait ends at once, on a slow or busy one it
takes longer, and only a condition that never comes fails. Timing itself is tested with `FakeClock`,
which code under test takes through its `clock=` parameter and which moves only when the test says.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
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


class LoopWatch:
    """Tells a blocked event loop from a busy machine: a 50 ms ticker on the loop beside one on a thread,
    which no event loop blocks. A machine too busy to run the process shows the same gap in both; a blocking
    call on the loop shows only in the loop's. Use as `async with LoopWatch() as watch:` around the load."""

    TICK_S = 0.05

    def __init__(self) -> None:
        self.loop_gaps: list[float] = []
        self.thread_gaps: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._thread_ticker, daemon=True)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopWatch:
        self._thread.start()
        self._task = asyncio.create_task(self._loop_ticker())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self._stop.set()
        self._thread.join()

    async def _loop_ticker(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(self.TICK_S)
            now = time.perf_counter()
            self.loop_gaps.append(now - last)
            last = now

    def _thread_ticker(self) -> None:
        last = time.perf_counter()
        while not self._stop.wait(self.TICK_S):
            now = time.perf_counter()
            self.thread_gaps.append(now - last)
            last = now

    def assert_not_blocked(self, margin_s: float = 0.5) -> None:
        """The loop's longest gap is within `margin_s` of the machine's own longest gap."""
        loop_max, machine_max = max(self.loop_gaps), max(self.thread_gaps)
        assert loop_max < machine_max + margin_s, (
            f"event loop stalled for {loop_max:.3f} s; the machine itself for {machine_max:.3f} s"
        )
