"""Gateway metrics for Prometheus: traffic and latency as the gateway sees them, routing decisions, and the
router's own statistics (index size, KV-event counts and lag) read from `router.stats()` when scraped and
typed in `router_metrics.py`. Names follow Prometheus conventions: counters end in `_total`, times are in
seconds.

Each runtime owns its registry (no module globals): tests and several gateways in one process do not clash.
Histogram buckets cover 1 ms to 120 s: a warm-cache TTFT is tens of ms, a cold 32k-token prefill seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from eksinfer.gateway.router_metrics import router_families
from eksinfer.gateway.scheduling.framework import EndpointState

_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Routing (tokenize, hash, score) takes tens of microseconds to a few milliseconds: 20 us to 1 s.
_SCHED_BUCKETS_S = (2e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
PREFIX = "eksinfer_gateway_"
ROUTES = ("/v1/completions", "/v1/chat/completions")


class _StateCollector(Collector):
    """Per-endpoint gauges computed when Prometheus scrapes, from state the runtime already keeps."""

    def __init__(
        self,
        endpoints: Callable[[], Sequence[EndpointState]],
        router_stats: Callable[[], Mapping[str, Any]],
    ) -> None:
        self._endpoints = endpoints
        self._router_stats = router_stats

    def collect(self) -> Iterable[Metric]:
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
        yield from router_families(self._router_stats())


class GatewayMetrics:
    """The counters and histograms the request path updates; `render()` produces the /metrics page.

    `model` is the request's `model` field ("" when refused before admission); `pool` and `endpoint` are
    the engine that answered ("" when none did). Token counters: prompt and predicted-cached tokens are the
    router's own counts at routing time (so their ratio is the hit rate the router predicted, to compare with
    the engines' `vllm:prefix_cache_hits_total`); generated tokens are the engine's `usage.completion_tokens`,
    or, for a stream without usage, one per SSE event that carries a token (see `usage.py`).
    """

    def __init__(
        self,
        endpoints: Callable[[], Sequence[EndpointState]],
        router_stats: Callable[[], Mapping[str, Any]],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            PREFIX + "requests",
            "Requests answered, by API route, model, pool, endpoint and HTTP status.",
            ["route", "model", "pool", "endpoint", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Time from receiving a request to forwarding the first response bytes, by the pool (tier) that "
            "sent them.",
            ["route", "model", "pool"],
            buckets=_BUCKETS_S,
            registry=r,
        )
        self.e2e = Histogram(
            PREFIX + "request_duration_seconds",
            "Time from receiving a request to the end of its response, by the pool (tier) that answered.",
            ["route", "model", "pool"],
            buckets=_BUCKETS_S,
            registry=r,
        )
        self.scheduling = Histogram(
            PREFIX + "scheduling_duration_seconds",
            "Time the router took to choose an endpoint (tokenize, hash, filter, score, pick).",
            ["model"],
            buckets=_SCHED_BUCKETS_S,
            registry=r,
        )
        self.decisions = Counter(
            PREFIX + "decisions",
            "Routing decisions, by preset and reason.",
            ["preset", "reason"],
            registry=r,
        )
        self.retries = Counter(
            PREFIX + "upstream_retries",
            "Retries: attempts on another endpoint of the same pool after a retryable failure.",
            ["model"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens",
            "Prompt tokens routed, as the router counted them.",
            ["model"],
            registry=r,
        )
        self.cached_tokens = Counter(
            PREFIX + "prompt_tokens_predicted_cached",
            "Prompt tokens the router predicted cached on the endpoint it chose.",
            ["model"],
            registry=r,
        )
        self.generation_tokens = Counter(
            PREFIX + "generation_tokens", "Tokens generated in answers relayed.", ["model"], registry=r
        )
        self.attempt_failures = Counter(
            PREFIX + "attempt_failures",
            "Attempts that failed, by pool and kind (connect, broken, first_token_timeout, status).",
            ["model", "pool", "kind"],
            registry=r,
        )
        self.fallbacks = Counter(
            PREFIX + "fallbacks",
            "Tiers of a cascade a request passed over, by pool and reason (circuit_open, no_endpoint, "
            "shed_saturated, shed_ttft, context_too_long, attempts_exhausted, retry_budget, failed).",
            ["model", "pool", "reason"],
            registry=r,
        )
        self.stream_breaks = Counter(
            PREFIX + "stream_breaks",
            "Streams broken after their first content byte, by what followed (continued, error_event).",
            ["model", "pool", "action"],
            registry=r,
        )
        self.tiers = Gauge(
            PREFIX + "cascade_tier_info",
            "1 for each pool of a model's cascade: its kind (vllm, or a managed API such as bedrock) and its "
            "position (tier 1 is tried first). Join on (model, pool) to split request series by kind.",
            ["model", "pool", "kind", "tier"],
            registry=r,
        )
        self._cascades: list[tuple[str, str]] = []  # (model, pool) of every configured cascade tier
        self._endpoints = endpoints
        r.register(_StateCollector(endpoints, router_stats))
        # Label children cached by label values: `.labels()` takes a lock and builds a tuple on every call.
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric._name, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def describe_cascades(self, cascades: Mapping[str, Sequence[tuple[str, str]]]) -> None:
        """The configured cascades, model -> [(pool, kind), ...] in order (set once at start-up)."""
        for model, tiers in cascades.items():
            for position, (pool, kind) in enumerate(tiers, start=1):
                self.tiers.labels(model, pool, kind, str(position)).set(1)
                self._cascades.append((model, pool))

    def observe_request(
        self,
        route: str,
        model: str,
        endpoint: EndpointState | None,
        status: str,
        elapsed_s: float | None,
        pool: str = "",
    ) -> None:
        """One answered request; `elapsed_s` is None for requests refused before routing. `pool` names the
        tier that answered when no endpoint did (a managed API)."""
        pool, eid = (endpoint.pool, endpoint.id) if endpoint is not None else (pool, "")
        self._child(self.requests, route, model, pool, eid, status).inc()
        if elapsed_s is not None:
            self._child(self.e2e, route, model, pool).observe(elapsed_s)

    def observe_ttft(self, route: str, model: str, ttft_s: float, pool: str = "") -> None:
        """`pool`: the pool (tier) whose first bytes went to the client."""
        self._child(self.ttft, route, model, pool).observe(ttft_s)

    def observe_decision(
        self, model: str, preset: str, reason: str, elapsed_s: float, prompt_tokens: int, cached_tokens: int
    ) -> None:
        """One routing decision: its reason, how long it took, and the prompt tokens it counted."""
        self._child(self.decisions, preset, reason).inc()
        self._child(self.scheduling, model).observe(elapsed_s)
        if prompt_tokens:
            self._child(self.prompt_tokens, model).inc(prompt_tokens)
        if cached_tokens:
            self._child(self.cached_tokens, model).inc(cached_tokens)

    def observe_retry(self, model: str) -> None:
        self._child(self.retries, model).inc()

    def observe_attempt_failure(self, model: str, pool: str, kind: str) -> None:
        self._child(self.attempt_failures, model, pool, kind).inc()

    def observe_fallback(self, model: str, pool: str, reason: str) -> None:
        self._child(self.fallbacks, model, pool, reason).inc()

    def observe_stream_break(self, model: str, pool: str, action: str) -> None:
        self._child(self.stream_breaks, model, pool, action).inc()

    def observe_generated(self, model: str, tokens: int) -> None:
        if tokens > 0:
            self._child(self.generation_tokens, model).inc(tokens)

    def _zero_per_model(self) -> None:
        """Creates the per-model counters and histograms at 0 for every model the endpoints serve. A series
        that first appears at N loses those N to `rate()` (it has no earlier sample to rise from); at 0 the
        first scrape after an engine reports its models gives the baseline. The per-pool histograms start at 0
        for each pool serving the model: its endpoints' pools and its cascade's tiers (a managed tier has no
        endpoint). `requests_total` also carries endpoint and status, which are not known in advance, so it is
        not pre-created."""
        pairs = {(m, ep.pool) for ep in self._endpoints() for m in ep.models}
        pairs.update(self._cascades)
        for model in {m for m, _ in pairs}:
            for metric in (self.prompt_tokens, self.cached_tokens, self.generation_tokens, self.retries):
                self._child(metric, model)
            self._child(self.scheduling, model)
        for model, pool in pairs:
            for route in ROUTES:
                self._child(self.ttft, route, model, pool)
                self._child(self.e2e, route, model, pool)

    def render(self) -> bytes:
        self._zero_per_model()
        return generate_latest(self.registry)
