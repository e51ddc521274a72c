"""Passive per-endpoint health: ejection after consecutive failures, readmission, slow start.

Algorithm (Envoy's outlier detection, `consecutive_5xx`, adapted):
- every attempt's outcome is recorded: connect errors, retryable statuses, first-token timeouts and streams
  broken mid-way are failures; a request that ends well resets the count;
- `consecutive_failures` (3) in a row eject the endpoint for `base_ejection_s x n` (10 s x n, capped at
  `max_ejection_s`), n being how many times it was ejected; n drops by one for each success that comes at
  least `base_ejection_s` after its last failure, so an endpoint that stays good earns short ejections back;
- at most `max_ejected_percent` of a pool (at least one endpoint) is ejected at once, so one flaky pool
  cannot empty itself: a whole-pool outage is the circuit breaker's and the cascade's business;
- an ejection ends only by time: a good `/metrics` scrape does not end it (an engine that stalls every
  request still answers its scrapes);
- an endpoint coming back (readmitted, healthy again after failed checks) starts slowly: it is offered to
  the router for a share of requests that grows linearly from 10 % to 100 % over `slow_start_s` (a random
  draw per request from the injected generator), so a cold or still-shaky engine is not handed a full share
  at once. Slow start never empties a pool: if every candidate was left out by its draw, all are kept.
The healthy path costs one set lookup per request: filtering runs only while some endpoint is restricted.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from eksinfer.gateway.resilience.config import OutlierConfig
from eksinfer.gateway.scheduling.framework import EndpointState

log = logging.getLogger(__name__)

SLOW_START_FLOOR = 0.1  # share of a returning endpoint's traffic at the start of its ramp


@dataclass(slots=True)
class _Health:
    pool: str
    failures: int = 0
    last_failure: float = float("-inf")
    ejected_until: float | None = None
    times_ejected: int = 0
    down: bool = False  # the active health check says so
    returned_at: float | None = None  # start of slow start


class OutlierDetector:
    """Ejection, readmission and slow start for every endpoint; keyed by endpoint id."""

    def __init__(
        self,
        config: OutlierConfig,
        slow_start_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._slow_start_s = slow_start_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._health: dict[str, _Health] = {}
        self._restricted: set[str] = set()  # ejected, down or slow-starting: the only ones filtering looks at
        self.ejections_total: dict[str, int] = {}  # by pool

    def _of(self, ep: EndpointState) -> _Health:
        health = self._health.get(ep.id)
        if health is None:
            health = self._health[ep.id] = _Health(ep.pool)
        return health

    # --- outcomes ------------------------------------------------------------------------------------
    def record_success(self, ep: EndpointState) -> None:
        health = self._health.get(ep.id)
        if health is None:
            return
        health.failures = 0
        if health.times_ejected and self._clock() - health.last_failure >= self._config.base_ejection_s:
            health.times_ejected -= 1

    def record_failure(self, ep: EndpointState, pool: Sequence[EndpointState]) -> bool:
        """Counts a failure; True when it ejected the endpoint. `pool` is every endpoint of its pool."""
        health = self._of(ep)
        now = self._clock()
        health.failures += 1
        health.last_failure = now
        if health.ejected_until is not None or health.failures < self._config.consecutive_failures:
            return False
        ejected = sum(1 for other in pool if self.is_ejected(other))
        allowed = max(1, int(len(pool) * self._config.max_ejected_percent / 100.0))
        if ejected >= allowed:
            return False
        health.times_ejected += 1
        duration = min(self._config.base_ejection_s * health.times_ejected, self._config.max_ejection_s)
        health.ejected_until = now + duration
        health.returned_at = None
        self._restricted.add(ep.id)
        self.ejections_total[ep.pool] = self.ejections_total.get(ep.pool, 0) + 1
        log.warning(
            "endpoint %s ejected for %.0f s after %d failures in a row", ep.id, duration, health.failures
        )
        return True

    def eject(self, ep: EndpointState, pool: Sequence[EndpointState]) -> bool:
        """Ejects at once (a stall seen by the watchdog), within the pool's ejection cap."""
        health = self._of(ep)
        health.failures = max(health.failures, self._config.consecutive_failures - 1)
        return self.record_failure(ep, pool)

    # --- active checks and comebacks ---------------------------------------------------------------------
    def set_down(self, ep: EndpointState, down: bool) -> None:
        """The active health check's verdict; coming back up starts slow start."""
        health = self._of(ep)
        if health.down == down:
            return
        health.down = down
        if down:
            self._restricted.add(ep.id)
        else:
            self.returned(ep)

    def returned(self, ep: EndpointState) -> None:
        """An endpoint takes traffic again (healthy after failed scrapes, checks back up): slow start."""
        if self._slow_start_s <= 0:
            self._unrestrict(ep.id)
            return
        self._of(ep).returned_at = self._clock()
        self._restricted.add(ep.id)

    def forget(self, endpoint_id: str) -> None:
        self._health.pop(endpoint_id, None)
        self._restricted.discard(endpoint_id)

    # --- reads ----------------------------------------------------------------------------------------
    def is_ejected(self, ep: EndpointState) -> bool:
        health = self._health.get(ep.id)
        return (
            health is not None and health.ejected_until is not None and self._clock() < health.ejected_until
        )

    def is_down(self, ep: EndpointState) -> bool:
        health = self._health.get(ep.id)
        return health is not None and health.down

    def in_slow_start(self, ep: EndpointState) -> bool:
        health = self._health.get(ep.id)
        return health is not None and health.returned_at is not None

    def eligible(self, candidates: list[EndpointState]) -> list[EndpointState]:
        """The candidates that may take a new request now (ejections past their time are readmitted here)."""
        if not self._restricted:
            return candidates
        now = self._clock()
        out: list[EndpointState] = []
        held_back: list[EndpointState] = []
        for ep in candidates:
            if ep.id not in self._restricted:
                out.append(ep)
                continue
            health = self._health[ep.id]
            if health.down:
                continue
            if health.ejected_until is not None:
                if now < health.ejected_until:
                    continue
                health.ejected_until = None
                health.failures = 0
                log.info("endpoint %s readmitted after its ejection", ep.id)
                if self._slow_start_s > 0:
                    health.returned_at = now
            if health.returned_at is not None:
                share = self._share(now - health.returned_at)
                if share >= 1.0:
                    health.returned_at = None
                elif self._rng.random() >= share:
                    held_back.append(ep)
                    continue
            if health.returned_at is None:
                self._restricted.discard(ep.id)
            out.append(ep)
        return out or held_back

    def _share(self, elapsed_s: float) -> float:
        return SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * elapsed_s / self._slow_start_s

    def _unrestrict(self, endpoint_id: str) -> None:
        health = self._health.get(endpoint_id)
        if health is None or (health.ejected_until is None and not health.down):
            if health is not None:
                health.returned_at = None
            self._restricted.discard(endpoint_id)
