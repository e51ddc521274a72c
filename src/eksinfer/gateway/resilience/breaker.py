"""Per-pool circuit breaker: closed, open, half-open with one trial request.

- closed: requests flow; `consecutive_failures` (5) failed attempts in a row across the pool (no success in
  between), from at least half of its endpoints (and two when it has two or more: one or two dead engines
  are the outlier detector's job, not a reason to close the whole pool), open the circuit;
- open: the pool is skipped (the cascade moves to its next tier) for `open_s` (5 s), unless it is the last
  tier: with nowhere else to go, requests still try its eligible endpoints (a refusal would be a certain
  failure; the retry budget keeps that from becoming a storm);
- half-open: the first request after `open_s` is the trial, the only one let through; its success closes the
  circuit, its failure opens it again for another `open_s`. A trial that never reached an endpoint is
  handed back (`abandon_trial`), so the next request becomes the trial.
Failures count mid-stream breaks too: a pool whose streams die half-way is not healthy because they started
(a known trap: a breaker that records success when the stream opens).
"""

from __future__ import annotations

import logging
import time
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
        "_failing",
        "_opened_at",
        "_trial",
        "failures",
        "name",
        "opens_total",
        "state",
    )

    def __init__(self, name: str, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._config = config
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._failing: set[str] = set()
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

    def abandon_trial(self) -> None:
        """The trial request never reached an endpoint: the next request may try."""
        if self.state is BreakerState.HALF_OPEN:
            self._trial = False

    def record_success(self) -> None:
        if self.state is BreakerState.OPEN:
            return  # a request from before the opening; the trial decides
        if self.state is BreakerState.HALF_OPEN:
            log.info("circuit of pool %s closed: the trial request succeeded", self.name)
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._failing.clear()
        self._trial = False

    def record_failure(self, endpoint_id: str, pool_size: int) -> None:
        if self.state is BreakerState.OPEN:
            return
        if self.state is BreakerState.HALF_OPEN:
            self._open("the trial request failed")
            return
        self.failures += 1
        self._failing.add(endpoint_id)
        if self.failures >= self._config.consecutive_failures and len(self._failing) >= _spread(pool_size):
            self._open(f"{self.failures} failures in a row on {len(self._failing)} endpoint(s)")

    def _open(self, why: str) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._trial = False
        self.failures = 0
        self._failing.clear()
        self.opens_total += 1
        log.warning("circuit of pool %s open for %.1f s: %s", self.name, self._config.open_s, why)


def _spread(pool_size: int) -> int:
    """Distinct endpoints a failure streak must cover to open the circuit: half the pool (at least two when
    there are two), so a few bad engines are left to the outlier detector."""
    return max(min(2, pool_size), -(-pool_size // 2))
