"""The `resilience:` section of the gateway YAML (pydantic at the edge; every field described).

    resilience:
      retries:   {attempts_per_pool: 3, max_attempts: 6, backoff_base_s: 0.025, backoff_max_s: 1, jitter: 0.2}
      budget:    {percent: 20, min_retries: 3}
      outlier:   {consecutive_failures: 3, base_ejection_s: 10, max_ejection_s: 300, max_ejected_percent: 50}
      breaker:   {min_failures: 5, failure_rate: 0.5, window_s: 10, open_s: 5}
      health_checks: {enabled: true, path: /health, interval_s: 2, timeout_s: 1, unhealthy_after: 2,
                      probe_ejected: true}
      slow_start_s: 10          # with slow_start_aggression: 1, slow_start_min_weight: 0.1 (Envoy's)

Defaults and where they come from: the retry budget is Envoy's (`retry_budget`: 20 % of active requests,
at least 3 concurrent retries; envoy `config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget`); outlier
ejection follows Envoy's outlier detection (ejection time = base x times ejected, capped; a share of the pool
that may be ejected at once) with a lower failure count (3, not Envoy's 5) because an LLM request is long
and expensive to lose; Bifrost's backoff is 500 ms x 2^n with 0.8-1.2 jitter between providers, ours starts
at 25 ms because the next attempt goes to another engine, not back to the one that failed.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, model_validator

from eksinfer.strict import StrictModel


class RetryConfig(StrictModel):
    attempts_per_pool: int = Field(
        3, ge=1, le=32, description="Endpoints of one pool tried for a request before it falls back."
    )
    max_attempts: int = Field(
        6, ge=1, le=64, description="Attempts for one request over every pool of its cascade."
    )
    backoff_base_s: float = Field(
        0.025, ge=0, description="Wait before the second attempt; doubles with each further one."
    )
    backoff_max_s: float = Field(1.0, ge=0, description="Cap of the wait between two attempts.")
    jitter: float = Field(
        0.2, ge=0, le=1, description="Each wait is scaled by a random factor in [1 - jitter, 1 + jitter]."
    )


class BudgetConfig(StrictModel):
    percent: float = Field(
        20.0, ge=0, le=100, description="Retries in flight at most this share of requests in flight (Envoy)."
    )
    min_retries: int = Field(3, ge=0, description="Retries always allowed in flight, whatever the share.")


class OutlierConfig(StrictModel):
    consecutive_failures: int = Field(
        3,
        ge=1,
        description="Failures in a row (errors, first-token timeouts, broken streams) ejecting an endpoint.",
    )
    base_ejection_s: float = Field(
        10.0, gt=0, description="First ejection time; the n-th ejection lasts n times this."
    )
    max_ejection_s: float = Field(300.0, gt=0, description="Longest ejection.")
    max_ejected_percent: float = Field(
        50.0,
        ge=0,
        le=100,
        description="Share of a pool that may be ejected at once (at least one endpoint), so an outage of "
        "everything is left to the circuit breaker and the cascade instead of emptying the pool.",
    )


class BreakerConfig(StrictModel):
    min_failures: int = Field(
        5,
        ge=1,
        validation_alias=AliasChoices("min_failures", "consecutive_failures"),
        description="Failed attempts within window_s that may open a pool's circuit (also read as "
        "consecutive_failures, its name before the breaker judged a failure share).",
    )
    failure_rate: float = Field(
        0.5, gt=0, le=1, description="Share of the pool's attempts within window_s that must have failed."
    )
    window_s: float = Field(10.0, gt=0, description="The window failures and successes are counted over.")
    open_s: float = Field(5.0, gt=0, description="Time the circuit stays open before one trial request.")


class HealthCheckConfig(StrictModel):
    enabled: bool = Field(True, description="Poll each endpoint's health path beside the passive checks.")
    path: str = Field("/health", description="Path polled (vLLM answers 200 on /health while it serves).")
    interval_s: float = Field(2.0, gt=0, description="Time between two checks of one endpoint.")
    timeout_s: float = Field(1.0, gt=0, description="Timeout of one check.")
    unhealthy_after: int = Field(2, ge=1, description="Failed checks in a row that take an endpoint out.")
    healthy_after: int = Field(1, ge=1, description="Good checks in a row that bring it back.")
    probe_ejected: bool = Field(
        True,
        description="While an endpoint is ejected, each passing check also sends it a one-token completion "
        "and ends the ejection when it is answered within timeout_s (health.py): /health does not show what "
        "ejects an engine (a stalled engine core, errors on requests).",
    )


class ResilienceConfig(StrictModel):
    retries: RetryConfig = Field(default_factory=RetryConfig, description="Retries of one request.")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="Gateway-wide retry budget.")
    outlier: OutlierConfig = Field(default_factory=OutlierConfig, description="Endpoint ejection.")
    breaker: BreakerConfig = Field(default_factory=BreakerConfig, description="Per-pool circuit breakers.")
    health_checks: HealthCheckConfig = Field(
        default_factory=HealthCheckConfig, description="Active health checks."
    )
    stall_after_s: float = Field(
        3.0,
        ge=0,
        description="An endpoint holding a request that waits for its first byte this long, while no byte of "
        "any of its requests arrived in that time, is stalled: ejected, and its waiting requests retried "
        "elsewhere at once (resilience/stall.py); 0 turns the watchdog off (first_token_timeout_s remains).",
    )
    slow_start_s: float = Field(
        10.0,
        ge=0,
        description="Slow-start window: an endpoint that comes back (readmitted, healthy again) or joins a "
        "pool already serving (scale-up, rollout, replacement node) takes a share of the pool's load that "
        "ramps up over this time (resilience/slowstart.py); 0 turns slow start off.",
    )
    slow_start_aggression: float = Field(
        1.0,
        gt=0,
        le=100,
        description="Shape of the ramp, Envoy's: weight = (elapsed / window) ^ (1 / aggression); 1 is "
        "linear, above 1 ramps faster at first.",
    )
    slow_start_min_weight: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Weight at the start of the ramp (Envoy's min_weight_percent, 10 %): a slow-starting "
        "endpoint holds at most weight x the mean requests in flight of its pool's other endpoints (at "
        "least one).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> ResilienceConfig:
        if self.retries.backoff_max_s < self.retries.backoff_base_s:
            raise ValueError("retries.backoff_max_s must be >= retries.backoff_base_s")
        if self.outlier.max_ejection_s < self.outlier.base_ejection_s:
            raise ValueError("outlier.max_ejection_s must be >= outlier.base_ejection_s")
        return self
