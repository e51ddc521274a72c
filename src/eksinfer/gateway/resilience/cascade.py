"""Per-model tiers of pools, and why a tier passes a request on.

A model with `models.<name>.cascade: [onprem, eks, bedrock]` is tried pool by pool in that order; a model
without an entry has one tier made of every pool that serves it (today's behaviour, no fallback). Before a
tier is tried the cascade asks, in this order (`SkipReason` names each):
- circuit open (the pool's breaker, `breaker.py`);
- no eligible endpoint (none healthy, all ejected, down or draining);
- context too long: prompt tokens plus `max_tokens` above the pool's `max_context_tokens` (checked once the
  router has counted the prompt; a larger-context tier takes it);
- shedding, never on the last tier (someone must take the request): every endpoint reports at least the
  pool's `max_waiting` queued requests, or the predicted TTFT is above the model's `ttft_slo_s`.

Predicted TTFT: the smallest, over the pool's eligible endpoints, of an exponentially weighted mean (weight
0.2 per sample) of the TTFTs the gateway measured on that endpoint. A prediction older than
`TTFT_MEMORY_S` (5 s) is dropped: a shed pool gets no new samples, and without forgetting it would be shed
for good; after 5 s one request probes it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eksinfer.gateway.resilience.errors import SkipReason
from eksinfer.gateway.scheduling.framework import EndpointState

TTFT_WEIGHT = 0.2
TTFT_MEMORY_S = 5.0
CHARS_PER_TOKEN = 4  # prompt size estimate when the router did not count tokens (approximate presets)


@dataclass(frozen=True, slots=True)
class Tier:
    """One step of a model's cascade. `pool` None: every pool serving the model (no cascade configured)."""

    pool: str | None
    kind: str = "vllm"
    preset: str | None = None
    max_context_tokens: int | None = None
    max_waiting: int | None = None

    @property
    def name(self) -> str:
        return self.pool or ""


@dataclass(frozen=True, slots=True)
class ModelPlan:
    tiers: tuple[Tier, ...]
    continue_streams: bool = False
    ttft_slo_s: float | None = None


class Cascade:
    """Plans per model (built once, cached) and the per-endpoint TTFT memory used for shedding."""

    def __init__(
        self,
        pools: Mapping[str, Any],
        models: Mapping[str, Any],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pools = dict(pools)
        self._models = dict(models)
        self._clock = clock
        self._plans: dict[str, ModelPlan] = {}
        self._ttft: dict[str, tuple[float, float]] = {}  # endpoint id -> (mean TTFT s, when last updated)
        self._default = ModelPlan((Tier(None),))

    def tier_of(self, pool: str) -> Tier:
        config = self._pools.get(pool)
        if config is None:
            return Tier(pool)
        return Tier(
            pool,
            kind=str(getattr(config, "kind", "vllm")),
            preset=getattr(config, "preset", None),
            max_context_tokens=getattr(config, "max_context_tokens", None),
            max_waiting=getattr(config, "max_waiting", None),
        )

    def plan(self, model: str) -> ModelPlan:
        plan = self._plans.get(model)
        if plan is None:
            route = self._models.get(model)
            if route is None:
                plan = self._default
            else:
                tiers = tuple(self.tier_of(p) for p in route.cascade)
                plan = ModelPlan(tiers, route.continue_streams, route.ttft_slo_s)
            self._plans[model] = plan
        return plan

    def managed_pools(self) -> dict[str, Any]:
        """Pools that are not vLLM engines (a managed API: Bedrock), by name."""
        return {n: c for n, c in self._pools.items() if getattr(c, "kind", "vllm") != "vllm"}

    # --- shedding -------------------------------------------------------------------------------------
    def observe_ttft(self, endpoint_id: str, ttft_s: float) -> None:
        now = self._clock()
        old = self._ttft.get(endpoint_id)
        if old is None or now - old[1] > TTFT_MEMORY_S:
            self._ttft[endpoint_id] = (ttft_s, now)
        else:
            self._ttft[endpoint_id] = (old[0] + TTFT_WEIGHT * (ttft_s - old[0]), now)

    def predicted_ttft_s(self, candidates: Sequence[EndpointState]) -> float | None:
        now = self._clock()
        best: float | None = None
        for ep in candidates:
            known = self._ttft.get(ep.id)
            if known is None or now - known[1] > TTFT_MEMORY_S:
                return None  # an endpoint without a recent sample: no reason to shed
            best = known[0] if best is None else min(best, known[0])
        return best

    def shed_reason(
        self, tier: Tier, plan: ModelPlan, candidates: Sequence[EndpointState]
    ) -> SkipReason | None:
        """Why this (not last) tier should pass the request on, or None to try it."""
        if tier.max_waiting is not None and all(
            (ep.num_waiting or 0) >= tier.max_waiting for ep in candidates
        ):
            return SkipReason.SHED_SATURATED
        if plan.ttft_slo_s is not None:
            predicted = self.predicted_ttft_s(candidates)
            if predicted is not None and predicted > plan.ttft_slo_s:
                return SkipReason.SHED_TTFT
        return None

    def forget(self, endpoint_id: str) -> None:
        self._ttft.pop(endpoint_id, None)


def request_tokens(body: Mapping[str, Any], prompt_tokens: int, prompt_chars: int) -> int:
    """Prompt plus the most the request may generate, the size a context window must hold."""
    prompt = prompt_tokens or prompt_chars // CHARS_PER_TOKEN
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    return prompt + (limit if isinstance(limit, int) and limit > 0 else 0)
