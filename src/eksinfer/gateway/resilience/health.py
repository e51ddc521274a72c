"""Active health checks: each endpoint's `/health` polled beside the passive checks (scrapes, outcomes).

vLLM answers `GET /health` with 200 while its engine loop runs and 503 (or nothing) once it is dead, even when
its HTTP server still accepts connections. `unhealthy_after` (2) failed checks in a row (a connection error,
a timeout or a 5xx) take the endpoint out of routing through the outlier detector; `healthy_after` (1) good
check brings it back, in slow start, and lets its pool's open circuit try a request now (`on_back`): the
breaker's `open_s` is a guess at how long a pool stays broken, and a pool whose engines pass their checks
again has answered it (after an outage every request would otherwise go to a slower tier for up to `open_s`).
A 404 counts as alive: an OpenAI-compatible server without the route.

While the outlier detector holds an endpoint ejected, each check that passes also sends it one real request
(`probe_ejected`: a one-token completion for a model it serves) and ends the ejection when that is answered
within `timeout_s` (`OutlierDetector.uneject`; slow start follows). The ejection time is a guess at how long
an engine stays bad, as `open_s` is for a circuit. Envoy lets a passing active check end an ejection
(`successful_active_health_check_uneject_host`, on by default) and warns that a check which does not exercise
the data path ends it too early. `/health` is such a check for what ejects an engine here: a stalled engine
core, or errors on requests, leave it answering 200. So the check that ends an ejection is a request, as
LiteLLM's model health checks are (they make an actual API call). In the fault bench the stalled engine,
ejected a second time for 20 s, sat out 13 s after its stall had ended while its pool queued.
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
        self.probes_total = 0

    async def check_once(self, state: EndpointState) -> bool:
        self.checks_total += 1
        try:
            async with self._session.get(state.url + self._config.path, timeout=self._timeout) as resp:
                await resp.read()
                return resp.status < 500
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def probe_once(self, state: EndpointState) -> bool:
        """One completion of one token for a model the endpoint serves: answered (200) within `timeout_s`."""
        model = min(state.models) if state.models else None
        if model is None:
            return False
        self.probes_total += 1
        body = {"model": model, "prompt": "ping", "max_tokens": 1, "stream": False}
        try:
            async with self._session.post(
                state.url + "/v1/completions", json=body, timeout=self._timeout
            ) as resp:
                await resp.read()
                return resp.status == 200
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
            elif (
                ok
                and self._config.probe_ejected
                and self._detector.is_ejected(state)
                and await self.probe_once(state)
                and self._detector.uneject(state)
            ):
                log.info("endpoint %s answered a probe request: its ejection ends", state.id)
            await asyncio.sleep(self._config.interval_s)
