"""Per-pool circuit breaker: closed, open, half-open with one trial request.

- closed: requests flow. The circuit opens when, over the last `window_s` (10 s), at least `min_failures`
  (5) attempts failed, they are at least `failure_rate` (half) of the pool's finished attempts, and they
  come from at least half of its endpoints (and two when it has two or more: one or two dead engines are the
  outlier detector's job, not a reason to close the whole pool);
- open: the pool is skipped (the cascade moves to its next tier) for `open_s` (5 s), unless it is the last
  tier: with nowhere else to go, requests still try its eligible endpoints (a refusal would be a certain
  failure; the retry budget keeps that from becoming a storm);
- half-open: the first request after `open_s` is the trial, the only one let through; its first byte
  (`answered`) closes the circuit, its failure before that opens it again for another `open_s`. A trial that
  never reached an endpoint is handed back (`abandon_trial`), so the next request becomes the trial. The
  trial is judged at its first byte, not at the end of its stream: the question it answers is whether the
  pool answers again, and an LLM stream lasts seconds to minutes, during which a half-open pool took no
  other request (after the fault bench's outage, 20 to 26 of 36 requests went to the slower Bedrock tier
  while the trial streamed 32 tokens). A break later in the trial's stream counts as any failure does in a
  closed circuit.
Failures count mid-stream breaks too: a pool whose streams die half-way is not healthy because they started
(a known trap: a breaker that records success when the stream opens). So a success is booked when a stream
ends, seconds after it began, while a failure before the first byte is booked at once. A streak count ("N
failures with no success between") is biased by that lag: under load, a pool with one engine failing 30 %
of its requests and three healthy ones showed five fast failures between two slow successes and opened,
sending healthy traffic to a slower tier. A failure share over a window is not: at a steady rate, successes
enter the window as fast as requests start, only later (Hystrix and resilience4j judge by a windowed
failure rate for the same reason).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from enum import IntEnum

from eksinfer.gateway.resilience.config import BreakerConfig

log = logging.getLogger(__name__)


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    __slots__ = (
        "_clock",
        "_config",
        "_failures",
        "_opened_at",
        "_outcomes",
        "_trial",
        "name",
        "opens_total",
        "state",
    )

    def __init__(self, name: str, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._config = config
        self._clock = clock
        self.state = BreakerState.CLOSED
        # finished attempts in the window, oldest first: (time, failing endpoint id, or None for a success)
        self._outcomes: deque[tuple[float, str | None]] = deque()
        self._failures = 0
        self._opened_at = 0.0
        self._trial = False
        self.opens_total = 0

    def allow(self) -> bool:
        """Whether a request may go to the pool now; in half-open, True once (the trial)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self._config.open_s:
                return False
            self.state = BreakerState.HALF_OPEN
            self._trial = False
            log.info("circuit of pool %s half-open: one trial request", self.name)
        if self._trial:
            return False
        self._trial = True
        return True

    def try_now(self) -> None:
        """An endpoint of the pool passes its health checks again: an open circuit lets its trial through
        now rather than at the end of `open_s` (health.py)."""
        if self.state is BreakerState.OPEN:
            self._opened_at = self._clock() - self._config.open_s

    def abandon_trial(self) -> None:
        """The trial request never reached an endpoint: the next request may try."""
        if self.state is BreakerState.HALF_OPEN:
            self._trial = False

    @property
    def failures(self) -> int:
        """Failed attempts in the current window."""
        self._forget(self._clock())
        return self._failures

    def answered(self) -> None:
        """An attempt on the pool got its first byte: in half-open, the trial's verdict (closed now)."""
        if self.state is BreakerState.HALF_OPEN:
            log.info("circuit of pool %s closed: the trial request answered", self.name)
            self.state = BreakerState.CLOSED
            self._trial = False
            self._reset()

    def record_success(self) -> None:
        if self.state is BreakerState.OPEN:
            return  # a request from before the opening; the trial decides
        if self.state is BreakerState.HALF_OPEN:
            log.info("circuit of pool %s closed: the trial request succeeded", self.name)
            self.state = BreakerState.CLOSED
            self._trial = False
            self._reset()
        now = self._clock()
        self._outcomes.append((now, None))
        self._forget(now)

    def record_failure(self, endpoint_id: str, pool_size: int) -> None:
        if self.state is BreakerState.OPEN:
            return
        if self.state is BreakerState.HALF_OPEN:
            self._open("the trial request failed")
            return
        now = self._clock()
        self._outcomes.append((now, endpoint_id))
        self._failures += 1
        self._forget(now)
        cfg = self._config
        if self._failures < cfg.min_failures or self._failures < cfg.failure_rate * len(self._outcomes):
            return
        failing = {ep for _, ep in self._outcomes if ep is not None}
        if len(failing) >= _spread(pool_size):
            self._open(
                f"{self._failures} of {len(self._outcomes)} attempts failed in {cfg.window_s:g} s, "
                f"on {len(failing)} endpoint(s)"
            )

    def _forget(self, now: float) -> None:
        horizon = now - self._config.window_s
        outcomes = self._outcomes
        while outcomes and outcomes[0][0] < horizon:
            if outcomes.popleft()[1] is not None:
                self._failures -= 1

    def _reset(self) -> None:
        self._outcomes.clear()
        self._failures = 0

    def _open(self, why: str) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._trial = False
        self._reset()
        self.opens_total += 1
        log.warning("circuit of pool %s open for %.1f s: %s", self.name, self._config.open_s, why)


def _spread(pool_size: int) -> int:
    """Distinct endpoints a failure streak must cover to open the circuit: half the pool (at least two when
    there are two), so a few bad engines are left to the outlier detector."""
    return max(min(2, pool_size), -(-pool_size // 2))
