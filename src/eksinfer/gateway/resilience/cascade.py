"""Per-model tiers of pools, and why a tier passes a request on.

A model with `models.<name>.cascade: [onprem, eks, bedrock]` is tried pool by pool in that order; a model
without an entry has one tier made of every pool that serves it (today's behaviour, no fallback). Before a
tier is tried the cascade asks, in this order (`SkipReason` names each):
- circuit open (the pool's breaker, `breaker.py`);
- no eligible endpoint (none healthy, all ejected, down or draining);
- context too long: prompt tokens plus `max_tokens` above the pool's `max_context_tokens` (checked once the
  router has counted the prompt; a larger-context tier takes it);
- shedding, never on the last tier (someone must take the request): every endpoint reports at least the
  pool's `max_waiting` queued requests, or the predicted TTFT is above the model's `ttft_slo_s` on every
  eligible endpoint and the next tier is not known to be slower.

Predicted TTFT of an endpoint: the queue ahead of a new request, then the prefill of its own prompt. A vLLM
engine starts a waiting request when a running one ends (or frees KV blocks), and computes prompts within a
per-step token budget, first come first served, so

    ttft(e) = max(queue_s(e), prefill_ahead_s(e)) + prefill_s(e, uncached(e))
    queue_s(e) = ahead(e) x decode_s(e) / slots(e)
    ahead(e) = max(num_waiting(e), first_byte_waits(e) - free_slots(e))
    prefill_ahead_s(e) = b(e) x max(own_prompt_tokens(e), num_waiting(e) x mean_tokens(e))
    prefill_s(e, u) = a(e) + b(e) x u,   uncached(e) = prompt_tokens - predicted_cached_tokens(e)

- `num_waiting`: the engine's own queue from its last scrape;
- `first_byte_waits`: the gateway's own attempts on e still waiting for their first byte (the stall watch
  counts them; no scrape lag, so a burst sent since the last scrape is seen at once); `free_slots` =
  slots - num_running discounts those that the engine starts at once;
- `decode_s`: an exponentially weighted mean (weight 0.2 per sample) of the time from first to last byte
  of the streams e answered (its service time once a slot is given);
- `slots`: the most requests e has been seen running (vLLM's `max_num_seqs`, or what its KV cache holds),
  learned when a scrape lands (`observe_scrape`), never while predicting;
- `a`, `b`, `mean_tokens`: e's own prefill fit (prefill.py: its step time, seconds per uncached token,
  mean uncached tokens per request; from vLLM's `vllm:request_prefill_time_seconds`,
  `vllm:request_prefill_kv_computed_tokens` and `vllm:inter_token_latency_seconds`);
- `own_prompt_tokens`: the uncached prompt tokens of the gateway's streamed requests on e not yet at their
  first token (`EndpointState.inflight_streamed_prompt_tokens`, the router's ledger). Not the non-streamed
  ones: their first byte comes with their last, so their prompts would count for their whole decode;
- `num_waiting x mean_tokens` counts the engine's queue (other clients, other gateway replicas, the
  gateway's own non-streamed requests) at the mean size e has been computing: the approximation here, as
  is ignoring a prompt still in chunked prefill among the running requests (the engine does not report
  its progress; the gateway's own streamed ones are in `own_prompt_tokens`);
- `prompt_tokens`, `predicted_cached_tokens(e)`: the router's count (exact when tokenized, characters / 4
  otherwise) and the KV index's predicted hit on e (0 for presets without an index).
The max, not the sum, of the two queue terms: while a request waits for a slot, the prompts ahead of it are
admitted and prefilled (a slot-bound engine), and when slots are free the queue is prompts waiting for the
token budget (a prefill-bound engine). Without evidence a term is 0 (no decode time seen, no prefill fit
yet). `shed_reason` is called twice per request on a tier that may shed, for a model with `ttft_slo_s`:
before routing without the prompt (a lower bound, so a queue that is already too long sheds without
tokenizing), and after routing with it (`PromptCost`). For a P/D model the prompt is prefilled by another
pool and its own term is left out. Unlike the mean of past TTFTs the estimate moves as soon as a queue
forms, not after the queued requests have waited.

The next tier: a managed tier's (Bedrock) TTFT is an exponentially weighted mean of the TTFTs the gateway
measured on it, remembered `TIER_MEMORY_S` (60 s). Shedding to it while it is known to be slower than the
wait here would trade a queue for a longer wait. Unknown (never measured, or forgotten), one shed request
probes it; until that probe's first token (or `TIER_MEMORY_S`) the others stay, so a slow tier costs one
request per minute, not every request shed while the probe waits for its first token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eksinfer.gateway.resilience.errors import SkipReason
from eksinfer.gateway.resilience.prefill import PrefillFit
from eksinfer.gateway.scheduling.framework import Decision, EndpointState

TTFT_WEIGHT = 0.2
TIER_MEMORY_S = 60.0
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


@dataclass(frozen=True, slots=True)
class PromptCost:
    """One request's prompt as the router saw it: its tokens, the tokens predicted cached per endpoint id,
    and the uncached tokens the router's ledger already charged to the endpoint it chose (counted in that
    endpoint's `inflight_streamed_prompt_tokens` when it streams, which are otherwise the prompts ahead)."""

    tokens: int
    cached: Mapping[str, int] = field(default_factory=dict)
    charged_on: str | None = None
    charged_tokens: int = 0

    @classmethod
    def of(cls, decision: Decision) -> PromptCost:
        ticket = decision.ticket
        charged = ticket is not None and ticket.streamed
        return cls(
            decision.prompt_tokens,
            decision.cached_tokens_by_endpoint,
            decision.endpoint.id if charged else None,
            ticket.prompt_tokens if ticket is not None and charged else 0,
        )

    def uncached(self, endpoint_id: str) -> int:
        return self.tokens - min(self.tokens, self.cached.get(endpoint_id, 0))


@dataclass(slots=True)
class _Engine:
    """What shedding learned about one endpoint (observe_* methods only)."""

    decode_s: float | None = None  # mean time from first to last byte
    slots: int = 0  # most requests seen running at once
    prefill: PrefillFit = field(default_factory=PrefillFit)


class Cascade:
    """Plans per model (built once, cached) and what shedding learns per endpoint and per managed tier."""

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
        self._engines: dict[str, _Engine] = {}  # endpoint id -> what shedding learned about it
        self._tier_ttft: dict[str, tuple[float, float]] = {}  # managed pool -> (mean TTFT s, when updated)
        self._probes: dict[str, float] = {}  # managed pool -> when a shed request went to measure it
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
    def _engine(self, endpoint_id: str) -> _Engine:
        engine = self._engines.get(endpoint_id)
        if engine is None:
            engine = self._engines[endpoint_id] = _Engine()
        return engine

    def observe_decode(self, endpoint_id: str, decode_s: float) -> None:
        """A stream from `endpoint_id` ended `decode_s` after its first byte."""
        engine = self._engine(endpoint_id)
        old = engine.decode_s
        engine.decode_s = decode_s if old is None else old + TTFT_WEIGHT * (decode_s - old)

    def observe_scrape(self, ep: EndpointState) -> None:
        """A /metrics page landed in `ep`: its running requests (slots) and its prefill histograms."""
        engine = self._engine(ep.id)
        if ep.num_running is not None and ep.num_running > engine.slots:
            engine.slots = ep.num_running
        requests, seconds, tokens = ep.prefill_requests, ep.prefill_seconds, ep.prefill_tokens
        if requests is not None and seconds is not None and tokens is not None:
            engine.prefill.observe(requests, tokens, seconds, ep.itl_count, ep.itl_seconds)

    def observe_tier_ttft(self, pool: str, ttft_s: float) -> None:
        """A managed tier answered its first token `ttft_s` after the attempt was sent."""
        now = self._clock()
        self._probes.pop(pool, None)
        old = self._tier_ttft.get(pool)
        if old is None or now - old[1] > TIER_MEMORY_S:
            self._tier_ttft[pool] = (ttft_s, now)
        else:
            self._tier_ttft[pool] = (old[0] + TTFT_WEIGHT * (ttft_s - old[0]), now)

    def tier_ttft_s(self, pool: str) -> float | None:
        known = self._tier_ttft.get(pool)
        if known is None or self._clock() - known[1] > TIER_MEMORY_S:
            return None
        return known[0]

    def predicted_ttft_s(
        self, ep: EndpointState, first_byte_waits: int = 0, prompt: PromptCost | None = None
    ) -> float:
        """Seconds from sending a request to `ep` now to its first token (module docstring); without
        `prompt`, the queue part only (a lower bound). Pure: reads what observe_* learned."""
        engine = self._engines.get(ep.id)
        if engine is None:
            return 0.0
        running = ep.num_running or 0
        waiting = ep.num_waiting or 0
        slots = max(engine.slots, running)
        ahead = max(waiting, first_byte_waits - max(0, slots - running))
        decode_s = engine.decode_s
        queue_s = ahead * decode_s / slots if ahead > 0 and decode_s is not None and slots > 0 else 0.0
        fit = engine.prefill
        if not fit.known:
            return queue_s
        own = ep.inflight_streamed_prompt_tokens
        if prompt is not None and prompt.charged_on == ep.id:
            own -= prompt.charged_tokens  # this request itself, charged when it was routed here
        ahead_s = max(queue_s, max(own, waiting * fit.mean_tokens) * fit.b_s_per_token)
        return ahead_s if prompt is None else ahead_s + fit.prefill_s(prompt.uncached(ep.id))

    def shed_reason(
        self,
        tier: Tier,
        plan: ModelPlan,
        candidates: Sequence[EndpointState],
        first_byte_waits: Callable[[str], int] = lambda _: 0,
        next_tier: Tier | None = None,
        prompt: PromptCost | None = None,
    ) -> SkipReason | None:
        """Why this (not last) tier should pass the request on, or None to try it. `prompt`: None before
        routing (the queue only), the router's counts after it."""
        if tier.max_waiting is not None and all(
            (ep.num_waiting or 0) >= tier.max_waiting for ep in candidates
        ):
            return SkipReason.SHED_SATURATED
        slo_s = plan.ttft_slo_s
        if slo_s is not None and candidates:
            wait_s = math.inf
            for ep in candidates:
                ttft_s = self.predicted_ttft_s(ep, first_byte_waits(ep.id), prompt)
                if ttft_s <= slo_s:
                    return None  # one endpoint within the SLO is enough (the healthy path: the first)
                wait_s = min(wait_s, ttft_s)
            if wait_s > slo_s:
                if next_tier is None or next_tier.kind == "vllm":
                    return SkipReason.SHED_TTFT  # engines: their own shedding judges them
                after = self.tier_ttft_s(next_tier.name)
                if after is not None:
                    return SkipReason.SHED_TTFT if after < wait_s else None
                now = self._clock()
                probe = self._probes.get(next_tier.name)
                if probe is None or now - probe > TIER_MEMORY_S:
                    self._probes[next_tier.name] = now  # this request measures the tier
                    return SkipReason.SHED_TTFT
        return None

    def forget(self, endpoint_id: str) -> None:
        self._engines.pop(endpoint_id, None)


def request_tokens(body: Mapping[str, Any], prompt_tokens: int, prompt_chars: int) -> int:
    """Prompt plus the most the request may generate, the size a context window must hold."""
    prompt = prompt_tokens or prompt_chars // CHARS_PER_TOKEN
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    return prompt + (limit if isinstance(limit, int) and limit > 0 else 0)
