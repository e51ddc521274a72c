"""Gateway metrics for Prometheus: traffic and latency as the gateway sees them, routing decisions, and the
router's own statistics (predicted hit ratio, index size, KV-event lag) read from `router.stats()` when
scraped.

Each runtime owns its registry (no module globals): tests and several gateways in one process do not clash.
Histogram buckets cover 1 ms to 120 s: a warm-cache TTFT is tens of ms, a cold 32k-token prefill seconds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from eksinfer.gateway.scheduling.framework import EndpointState

_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")
PREFIX = "eksinfer_gateway_"


class _StateCollector(Collector):
    """Per-endpoint gauges computed when Prometheus scrapes, from state the runtime already keeps."""

    def __init__(
        self,
        endpoints: Callable[[], Sequence[EndpointState]],
        router_stats: Callable[[], Mapping[str, Any]],
    ) -> None:
        self._endpoints = endpoints
        self._router_stats = router_stats

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now = time.monotonic()
        labels = ["endpoint", "pool"]
        age = GaugeMetricFamily(
            PREFIX + "scrape_age_seconds",
            "Seconds since the endpoint's /metrics was last read.",
            labels=labels,
        )
        stale = GaugeMetricFamily(
            PREFIX + "scrape_stale", "1 when the endpoint's scraped data is stale.", labels=labels
        )
        healthy = GaugeMetricFamily(
            PREFIX + "endpoint_healthy", "1 when the endpoint takes traffic.", labels=labels
        )
        inflight = GaugeMetricFamily(
            PREFIX + "inflight_requests", "Requests the gateway has in flight to the endpoint.", labels=labels
        )
        tokens = GaugeMetricFamily(
            PREFIX + "inflight_prompt_tokens",
            "Uncached prompt tokens sent to the endpoint whose first token has not come back.",
            labels=labels,
        )
        for ep in self._endpoints():
            values = [ep.id, ep.pool]
            age.add_metric(values, now - ep.scraped_at if ep.scraped_at is not None else float("inf"))
            stale.add_metric(values, 1.0 if ep.stale else 0.0)
            healthy.add_metric(values, 1.0 if ep.healthy else 0.0)
            inflight.add_metric(values, ep.inflight_requests)
            tokens.add_metric(values, ep.inflight_prompt_tokens)
        yield from (age, stale, healthy, inflight, tokens)
        yield from _router_families(self._router_stats())


def _router_families(stats: Mapping[str, Any]) -> Iterable[GaugeMetricFamily]:
    """Router statistics as gauges `eksinfer_gateway_router_<key>`: a number is one gauge; {name: number}
    gets a `key` label; {endpoint: {field: number}} becomes one gauge per field with an `endpoint` label.
    Strings and None are skipped (the router's `stats()` is for logs too)."""
    for key, value in stats.items():
        name = PREFIX + "router_" + _NAME_OK.sub("_", str(key))
        if _is_number(value):
            yield GaugeMetricFamily(name, f"Router statistic {key}.", value=float(value))
        elif isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
            families: dict[str, GaugeMetricFamily] = {}
            for endpoint, fields in value.items():
                for sub, number in fields.items():
                    if _is_number(number):
                        fam_name = name + "_" + _NAME_OK.sub("_", str(sub))
                        family = families.get(fam_name)
                        if family is None:
                            help_text = f"Router statistic {key}.{sub}, per endpoint."
                            family = families[fam_name] = GaugeMetricFamily(
                                fam_name, help_text, labels=["endpoint"]
                            )
                        family.add_metric([str(endpoint)], float(number))
            yield from families.values()
        elif isinstance(value, Mapping):
            family = GaugeMetricFamily(name, f"Router statistic {key}, by key.", labels=["key"])
            for sub, number in value.items():
                if _is_number(number):
                    family.add_metric([str(sub)], float(number))
            yield family


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class GatewayMetrics:
    """The counters and histograms the request path updates; `render()` produces the /metrics page."""

    def __init__(
        self,
        endpoints: Callable[[], Sequence[EndpointState]],
        router_stats: Callable[[], Mapping[str, Any]],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            PREFIX + "requests",
            "Requests answered, by API route, endpoint and HTTP status.",
            ["route", "endpoint", "status"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Time from receiving a request to forwarding the engine's first response bytes.",
            ["route"],
            buckets=_BUCKETS_S,
            registry=self.registry,
        )
        self.e2e = Histogram(
            PREFIX + "request_duration_seconds",
            "Time from receiving a request to the end of its response.",
            ["route"],
            buckets=_BUCKETS_S,
            registry=self.registry,
        )
        self.decisions = Counter(
            PREFIX + "decisions",
            "Routing decisions, by preset and reason.",
            ["preset", "reason"],
            registry=self.registry,
        )
        self.retries = Counter(
            PREFIX + "upstream_retries",
            "Requests sent to another endpoint after the first one could not be reached.",
            registry=self.registry,
        )
        self.registry.register(_StateCollector(endpoints, router_stats))
        # Label children cached by label values: `.labels()` takes a lock and builds a tuple on every call.
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric._name, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def observe_request(self, route: str, endpoint: str, status: str, elapsed_s: float | None) -> None:
        """One answered request; `elapsed_s` is None for requests refused before routing."""
        self._child(self.requests, route, endpoint, status).inc()
        if elapsed_s is not None:
            self._child(self.e2e, route).observe(elapsed_s)

    def observe_ttft(self, route: str, ttft_s: float) -> None:
        self._child(self.ttft, route).observe(ttft_s)

    def observe_decision(self, preset: str, reason: str) -> None:
        self._child(self.decisions, preset, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
