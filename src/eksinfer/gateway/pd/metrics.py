"""What the P/D hook reports, on the gateway's own Prometheus registry.

Client-seen TTFT is the gateway's `time_to_first_token_seconds` (it covers both hops); these add the parts
llm-d's sidecar traces (`prefill_duration_ms`, `coordinator_overhead_ms`): the prefill hop, the gateway's own
work around it (routing the prefill pool, building both bodies), and how often remote prefill ran.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from eksinfer.gateway.metrics import PREFIX

# Prefill of 8k tokens on one H100 takes ~0.5 s, 128k tokens tens of seconds; coordination is sub-ms to ms.
_PREFILL_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_OVERHEAD_BUCKETS_S = (1e-4, 2.5e-4, 5e-4, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

DECISIONS = ("remote", "local", "fallback")


class PdMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            PREFIX + "pd_decisions",
            "P/D decisions per model: remote (prefill pool, then decode), local (below the uncached-token "
            "threshold), fallback (remote prefill failed or timed out; decoded with a local prefill).",
            ["model", "decision"],
            registry=registry,
        )
        self.fallbacks = Counter(
            PREFIX + "pd_fallbacks",
            "Remote prefills abandoned for a local prefill, by reason.",
            ["model", "reason"],
            registry=registry,
        )
        self.prefill = Histogram(
            PREFIX + "pd_prefill_duration_seconds",
            "Time from sending the prefill request to its answer (prefill pool).",
            ["model"],
            buckets=_PREFILL_BUCKETS_S,
            registry=registry,
        )
        self.overhead = Histogram(
            PREFIX + "pd_coordination_overhead_seconds",
            "Gateway time of a remote prefill outside the prefill request itself: routing the prefill pool, "
            "building both bodies, reading the transfer parameters.",
            ["model"],
            buckets=_OVERHEAD_BUCKETS_S,
            registry=registry,
        )

    def decided(self, model: str, decision: str) -> None:
        self.decisions.labels(model, decision).inc()

    def fell_back(self, model: str, reason: str) -> None:
        self.decisions.labels(model, "fallback").inc()
        self.fallbacks.labels(model, reason).inc()

    def remote_done(self, model: str, prefill_s: float, overhead_s: float) -> None:
        self.decisions.labels(model, "remote").inc()
        self.prefill.labels(model).observe(prefill_s)
        self.overhead.labels(model).observe(max(0.0, overhead_s))
