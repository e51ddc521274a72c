"""The resilience state one gateway owns: cascade plans, outlier detector, breakers, retry budget, backoff,
managed-API clients; and its gauges for /metrics. Built by the runtime, read by the proxy."""

from __future__ import annotations

import asyncio
import importlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from eksinfer.gateway.resilience.breaker import CircuitBreaker
from eksinfer.gateway.resilience.cascade import Cascade
from eksinfer.gateway.resilience.config import ResilienceConfig
from eksinfer.gateway.resilience.outlier import OutlierDetector
from eksinfer.gateway.resilience.policy import Backoff, RetryBudget
from eksinfer.gateway.resilience.slowstart import SlowStartRamp
from eksinfer.gateway.resilience.stall import StallWatch
from eksinfer.gateway.scheduling.framework import EndpointState

log = logging.getLogger(__name__)

PREFIX = "eksinfer_gateway_"

# Where each managed pool kind's client lives (CONTRACTS: `BedrockClient(config)`); imported when used.
MANAGED_CLIENTS: dict[str, tuple[str, str]] = {
    "bedrock": ("eksinfer.gateway.bedrock.client", "BedrockClient"),
}


class ManagedClient(Protocol):
    """A managed API behind a pool (Bedrock): OpenAI bodies in, OpenAI answers and chunks out. Errors before
    the first chunk are `EksinferError`s with `status`, `code` and `retryable` (or `RequestRefused`)."""

    async def complete(self, body: dict[str, Any], model: str) -> dict[str, Any]: ...

    def stream(self, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]: ...


def make_managed_client(kind: str, config: Any) -> ManagedClient:
    module, name = MANAGED_CLIENTS[kind]
    client: ManagedClient = getattr(importlib.import_module(module), name)(config)
    return client


def managed_serves(config: Any, model: str) -> bool:
    """A managed pool serves the models its config maps (`models: {openai name: provider id}`)."""
    models = getattr(config, "models", None)
    return isinstance(models, Mapping) and model in models


class Resilience:
    """Everything the proxy consults between attempts; one per gateway process."""

    def __init__(
        self,
        config: ResilienceConfig,
        cascade: Cascade,
        *,
        managed: Mapping[str, ManagedClient] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        rng = rng or random.Random()
        self.config = config
        self.cascade = cascade
        self.clock = clock
        self.sleep = sleep
        ramp = SlowStartRamp(config.slow_start_s, config.slow_start_aggression, config.slow_start_min_weight)
        self.detector = OutlierDetector(config.outlier, ramp, clock=clock)
        self.budget = RetryBudget(config.budget)
        self.backoff = Backoff(config.retries, rng)
        self.stalls = StallWatch(config.stall_after_s)
        self.managed: dict[str, ManagedClient] = dict(managed or {})
        self._managed_configs = cascade.managed_pools()
        self._breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, pool: str) -> CircuitBreaker:
        breaker = self._breakers.get(pool)
        if breaker is None:
            breaker = self._breakers[pool] = CircuitBreaker(pool, self.config.breaker, self.clock)
        return breaker

    def managed_client(self, pool: str) -> ManagedClient | None:
        client = self.managed.get(pool)
        if client is None and pool in self._managed_configs:
            config = self._managed_configs[pool]
            client = self.managed[pool] = make_managed_client(str(config.kind), config)
        return client

    async def warm(self) -> None:
        """Builds every managed pool's client at start, off the event loop: importing botocore and loading
        its service model take about a second of CPU, which, done on the first request that falls back,
        froze the loop at the worst moment (health checks and scrapes timed out, the stall watchdog saw
        silence; benchmarks/bench_faults.py). A client that cannot warm (no credentials yet) is built again
        on first use."""
        for pool, config in self._managed_configs.items():
            if pool in self.managed:
                continue
            module, _ = MANAGED_CLIENTS[str(config.kind)]
            await asyncio.to_thread(importlib.import_module, module)
            client = self.managed.setdefault(pool, make_managed_client(str(config.kind), config))
            warm = getattr(client, "warm", None)
            if warm is not None:
                try:
                    await warm()
                except Exception as err:  # one that cannot warm is built again on first use
                    log.warning("managed pool %s: client not ready at start: %s", pool, err)

    def managed_models(self) -> set[str]:
        return {m for c in self._managed_configs.values() for m in (getattr(c, "models", None) or {})}

    def managed_serves(self, pool: str, model: str) -> bool:
        config = self._managed_configs.get(pool)
        return config is not None and managed_serves(config, model)

    async def close(self) -> None:
        for client in self.managed.values():
            close = getattr(client, "close", None)
            if close is not None:
                result = close()
                if isinstance(result, Awaitable):
                    await result

    def collector(
        self, endpoints: Callable[[], Sequence[EndpointState]], draining: Callable[[str], bool]
    ) -> Collector:
        return _ResilienceCollector(self, endpoints, draining)


class _ResilienceCollector(Collector):
    """Gauges read when Prometheus scrapes: breaker states, ejections, draining, the retry budget."""

    def __init__(
        self,
        res: Resilience,
        endpoints: Callable[[], Sequence[EndpointState]],
        draining: Callable[[str], bool],
    ) -> None:
        self._res = res
        self._endpoints = endpoints
        self._draining = draining

    def collect(self) -> Iterable[Metric]:
        res = self._res
        state = GaugeMetricFamily(
            PREFIX + "circuit_state", "Pool circuit: 0 closed, 1 half-open, 2 open.", labels=["pool"]
        )
        opens = CounterMetricFamily(
            PREFIX + "circuit_opens", "Times a pool's circuit opened.", labels=["pool"]
        )
        for name, breaker in sorted(res._breakers.items()):
            state.add_metric([name], int(breaker.state))
            opens.add_metric([name], breaker.opens_total)
        ejections = CounterMetricFamily(
            PREFIX + "outlier_ejections", "Endpoints ejected after failures in a row.", labels=["pool"]
        )
        for pool, count in sorted(res.detector.ejections_total.items()):
            ejections.add_metric([pool], count)
        labels = ["endpoint", "pool"]
        ejected = GaugeMetricFamily(PREFIX + "endpoint_ejected", "1 while ejected.", labels=labels)
        down = GaugeMetricFamily(
            PREFIX + "endpoint_check_failed", "1 while active checks fail.", labels=labels
        )
        drain = GaugeMetricFamily(PREFIX + "endpoint_draining", "1 while draining.", labels=labels)
        slow = GaugeMetricFamily(PREFIX + "endpoint_slow_start", "1 during slow start.", labels=labels)
        det = res.detector
        for ep in self._endpoints():
            values = [ep.id, ep.pool]
            ejected.add_metric(values, 1.0 if det.is_ejected(ep) else 0.0)
            down.add_metric(values, 1.0 if det.is_down(ep) else 0.0)
            drain.add_metric(values, 1.0 if self._draining(ep.id) else 0.0)
            slow.add_metric(values, 1.0 if det.in_slow_start(ep) else 0.0)
        budget = GaugeMetricFamily(PREFIX + "retries_inflight", "Retries in flight (retry budget use).")
        budget.add_metric([], res.budget.active_retries)
        denied = CounterMetricFamily(PREFIX + "retry_budget_denied", "Retries refused by the retry budget.")
        denied.add_metric([], res.budget.denied_total)
        stalls = CounterMetricFamily(PREFIX + "stalls", "Endpoints found stalled by the watchdog.")
        stalls.add_metric([], res.stalls.stalls_total)
        yield from (state, opens, ejections, ejected, down, drain, slow, budget, denied, stalls)
