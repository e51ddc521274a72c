"""Passive per-endpoint health: ejection after consecutive failures, readmission, slow start.

Algorithm (Envoy's outlier detection, `consecutive_5xx`, adapted):
- every attempt's outcome is recorded: connect errors, retryable statuses, first-token timeouts and streams
  broken mid-way are failures; a request that ends well resets the count;
- `consecutive_failures` (3) in a row eject the endpoint for `base_ejection_s x n` (10 s x n, capped at
  `max_ejection_s`), n being how many times it was ejected; n drops by one for each success that comes at
  least `base_ejection_s` after its last failure, so an endpoint that stays good earns short ejections back;
- at most `max_ejected_percent` of a pool (at least one endpoint) is ejected at once, so one flaky pool
  cannot empty itself: a whole-pool outage is the circuit breaker's and the cascade's business;
- an ejection ends by time, or earlier when the endpoint answers a real request the active health check
  sends it (`uneject`, health.py); a good `/metrics` scrape or `/health` does not end it (an engine that
  stalls every request still answers both);
- slow start (`slowstart.py`): an endpoint coming back (readmitted, healthy again after failed checks or
  scrapes) and one that joins a pool that is already serving (a scale-up, a rollout, a replacement node, found
  by discovery) take a share of the pool's load that ramps up over `slow_start_s`, so a cold or still-shaky
  engine is not handed a full share at once. The endpoints a pool starts with are not slow-started: a pool
  counts as serving from its first request, and only endpoints added after it ramp. Slow start never empties
  a pool: if every candidate is held back, all are kept.
The healthy path costs two set lookups per request: filtering runs only while some endpoint is restricted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from eksinfer.gateway.resilience.config import OutlierConfig
from eksinfer.gateway.resilience.slowstart import SlowStartRamp
from eksinfer.gateway.scheduling.framework import EndpointState

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Health:
    pool: str
    failures: int = 0
    last_failure: float = float("-inf")
    ejected_until: float | None = None
    times_ejected: int = 0
    down: bool = False  # the active health check says so
    returned_at: float | None = None  # start of slow start
    joining: bool = False  # joined a serving pool: slow start begins when it is first a candidate


class OutlierDetector:
    """Ejection, readmission and slow start for every endpoint; keyed by endpoint id."""

    def __init__(
        self,
        config: OutlierConfig,
        slow_start: SlowStartRamp | float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._ramp = slow_start if isinstance(slow_start, SlowStartRamp) else SlowStartRamp(slow_start)
        self._clock = clock
        self._health: dict[str, _Health] = {}
        self._restricted: set[str] = set()  # ejected, down or slow-starting: the only ones filtering looks at
        self._serving: set[str] = set()  # pools that have had a request: endpoints joining them slow-start
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

    def uneject(self, ep: EndpointState) -> bool:
        """Ends an ejection now (the endpoint answered a probe request); it is readmitted, in slow start, by
        the next `eligible`. False when it was not ejected."""
        if not self.is_ejected(ep):
            return False
        self._health[ep.id].ejected_until = self._clock()
        return True

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
        if not self._ramp.enabled:
            self._unrestrict(ep.id)
            return
        self._of(ep).returned_at = self._clock()
        self._restricted.add(ep.id)

    def joined(self, ep: EndpointState) -> None:
        """Discovery added an endpoint. One that joins a pool already serving requests slow-starts from the
        moment it is first a candidate (its models are known then); a pool's starting endpoints do not."""
        if self._ramp.enabled and ep.pool in self._serving:
            self._of(ep).joining = True
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
        return health is not None and (health.returned_at is not None or health.joining)

    def eligible(self, candidates: list[EndpointState]) -> list[EndpointState]:
        """The candidates that may take a new request now (ejections past their time are readmitted here)."""
        if candidates and (
            candidates[0].pool not in self._serving or candidates[-1].pool not in self._serving
        ):
            self._serving.update(ep.pool for ep in candidates)
        if not self._restricted:
            return candidates
        now = self._clock()
        kept: list[EndpointState] = []
        ramping: list[tuple[EndpointState, float]] = []
        for ep in candidates:
            if ep.id not in self._restricted:
                kept.append(ep)
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
                if self._ramp.enabled:
                    health.returned_at = now
            if health.joining:
                health.joining = False
                health.returned_at = now
                log.info("endpoint %s joined pool %s: slow start", ep.id, ep.pool)
            if health.returned_at is not None:
                weight = self._ramp.weight(now - health.returned_at)
                if weight < 1.0:
                    ramping.append((ep, weight))
                    continue
                health.returned_at = None
            self._restricted.discard(ep.id)
            kept.append(ep)
        if not ramping:
            return kept
        admitted = {ep.id for ep in kept}
        for ep, weight in ramping:
            if self._ramp.admits(ep, weight, [p for p in kept if p.pool == ep.pool]):
                admitted.add(ep.id)
        out = [ep for ep in candidates if ep.id in admitted]  # the candidates' order, for the pickers
        return out or [ep for ep, _ in ramping]

    def _unrestrict(self, endpoint_id: str) -> None:
        health = self._health.get(endpoint_id)
        if health is None or (health.ejected_until is None and not health.down):
            if health is not None:
                health.returned_at = None
                health.joining = False
            self._restricted.discard(endpoint_id)
