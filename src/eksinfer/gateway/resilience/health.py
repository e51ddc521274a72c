"""Active health checks: each endpoint's `/health` polled beside the passive checks (scrapes, outcomes).

vLLM answers `GET /health` with 200 while its engine loop runs and 503 (or nothing) once it is dead, even when
its HTTP server still accepts connections. `unhealthy_after` (2) failed checks in a row (a connection error,
a timeout or a 5xx) take the endpoint out of routing through the outlier detector; `healthy_after` (1) good
check brings it back, in slow start, and lets its pool's open circuit try a request now (`on_back`): the
breaker's `open_s` is a guess at how long a pool stays broken, and a pool whose engines pass their checks
again has answered it (after an outage every request would otherwise go to a slower tier for up to `open_s`).
A 404 counts as alive: an OpenAI-compatible server without the route.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from eksinfer.gateway.resilience.config import HealthCheckConfig
from eksinfer.gateway.resilience.outlier import OutlierDetector
from eksinfer.gateway.scheduling.framework import EndpointState

log = logging.getLogger(__name__)


class HealthChecker:
    """One loop per endpoint (`run`), started and cancelled by the runtime with the endpoint's scraper."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: HealthCheckConfig,
        detector: OutlierDetector,
        on_back: Callable[[EndpointState], None] = lambda state: None,
    ) -> None:
        self._session = session
        self._config = config
        self._detector = detector
        self._on_back = on_back
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self.checks_total = 0

    async def check_once(self, state: EndpointState) -> bool:
        self.checks_total += 1
        try:
            async with self._session.get(state.url + self._config.path, timeout=self._timeout) as resp:
                await resp.read()
                return resp.status < 500
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def run(self, state: EndpointState) -> None:
        bad = good = 0
        while True:
            ok = await self.check_once(state)
            bad, good = (0, good + 1) if ok else (bad + 1, 0)
            if not ok and bad == self._config.unhealthy_after:
                log.warning("endpoint %s failed %d health checks in a row", state.id, bad)
                self._detector.set_down(state, True)
            elif ok and good == self._config.healthy_after and self._detector.is_down(state):
                log.info("endpoint %s passes its health checks again", state.id)
                self._detector.set_down(state, False)
                self._on_back(state)
            await asyncio.sleep(self._config.interval_s)
