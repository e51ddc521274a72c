"""The router facade the proxy calls: composes the prefix indexes, the KV-event feed (kv_feed), the tokenizer
(tokens), the in-flight ledger and statistics (ledger) and the scheduling profiles, and turns one request
into one explainable `Decision`. It knows no plugin by name: what a profile needs (token ids) and what it does
after a decision (speculative index entries, router-side memory, the reason's word) come from the plugins'
declared contracts and hooks (scheduling.data, scheduling.runner).

Contract with the proxy (signatures are stable):

    router = Router(config)                  # RoutingConfig (gateway YAML `routing:`); raises ConfigError
    router.start()                           # in the running loop: starts subscribers, loads the tokenizer
    router.endpoint_added(state, kv_events="tcp://10.0.0.5:5557", kv_replay=None)
    decision = await router.route(model, body, headers, endpoints)   # NoEndpointError -> HTTP 503
    router.on_first_token(decision)          # first streamed chunk (or the full response)
    router.on_finish(decision, ok=True)      # always, once per routed request (errors, disconnects too)
    router.endpoint_removed(endpoint_id)
    await router.stop()
    router.stats()                           # index size, predicted hit ratio, event lag, decisions

In-flight accounting: `route` adds 1 request and the request's predicted *uncached* prompt tokens to the
chosen `EndpointState.inflight_requests` / `inflight_prompt_tokens`; `on_first_token` releases the tokens,
`on_finish` the request (idempotent, via the decision's ticket). The proxy keeps one `EndpointState` object
per endpoint, updates it in place, and does not change those two fields itself.
`decision.explain()` is the debug line; put it in the `config.debug_header` response header.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from eksinfer.gateway.routing.kv_feed import KvEventFeed
from eksinfer.gateway.routing.ledger import InflightLedger, RouterStats
from eksinfer.gateway.routing.tasks import TaskSet
from eksinfer.gateway.routing.tokens import PromptTokens
from eksinfer.gateway.scheduling.config import RoutingConfig
from eksinfer.gateway.scheduling.data import CACHE_SALT, MATCHED_TOKENS
from eksinfer.gateway.scheduling.framework import Decision, EndpointState, RoutingRequest, SchedulingContext
from eksinfer.gateway.scheduling.prefix import endpoint_block_size, prompt_tokens
from eksinfer.gateway.scheduling.registry import PluginDeps, Registry
from eksinfer.gateway.scheduling.runner import (
    NoEndpointError,
    Profile,
    build_profiles,
    decision_reason,
    notify_routed,
    run_profile,
)
from eksinfer.gateway.tokenize import PromptTokenizer, make_tokenizer, prompt_text, prompt_token_ids
from eksinfer.kvcache.index import PrefixIndex

log = logging.getLogger(__name__)

__all__ = ["Decision", "NoEndpointError", "Router"]


class Router:
    """See the module docstring for the contract with the proxy."""

    def __init__(
        self,
        config: RoutingConfig,
        *,
        tokenizer: PromptTokenizer | None = None,
        registry: Registry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        cap = config.index.default_capacity_blocks
        self.index = PrefixIndex(default_capacity_blocks=cap, clock=clock)
        self.approx_index = PrefixIndex(default_capacity_blocks=cap, clock=clock)
        self.deps = PluginDeps(
            self.index,
            self.approx_index,
            random.Random(config.seed),
            config.block_size,
            config.index.speculative_ttl_s,
        )
        self.profiles: dict[str, Profile] = build_profiles(config, self.deps, registry)
        self.tasks = TaskSet()
        self.tokens = PromptTokens(
            config.tokenizer, self.tasks, lambda pool: tokenizer or make_tokenizer(config, pool)
        )
        self.kv_feed = KvEventFeed(config.events, self.index, self.tasks)
        self.ledger = InflightLedger()
        self.counters = RouterStats()
        self._capacity: dict[str, int] = {}
        self._started = False

    @property
    def tokenizer(self) -> PromptTokenizer:
        return self.tokens.tokenizer

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start background work; call from inside the running event loop."""
        if self._started:
            return
        self._started = True
        self.tokens.start()
        self.kv_feed.start()

    async def stop(self) -> None:
        self._started = False
        await self.kv_feed.stop()
        await self.tokens.stop()
        await self.tasks.close()

    # -- endpoints -------------------------------------------------------------------------------------------
    def endpoint_added(
        self, state: EndpointState, kv_events: str | None = None, kv_replay: str | None = None
    ) -> None:
        """Track an endpoint; with `kv_events` (its ZMQ PUB address) subscribe to its KV events."""
        self._sync_capacity(state)
        self.kv_feed.subscribe(state.id, kv_events, kv_replay)

    def endpoint_removed(self, endpoint_id: str) -> None:
        self.kv_feed.unsubscribe(endpoint_id)
        self.index.remove_endpoint(endpoint_id)
        self.approx_index.remove_endpoint(endpoint_id)
        self._capacity.pop(endpoint_id, None)

    def _sync_capacity(self, ep: EndpointState) -> None:
        """Bound each endpoint's index entries by its engine's `num_gpu_blocks` once scraped."""
        blocks = ep.num_gpu_blocks
        if blocks and self._capacity.get(ep.id) != blocks:
            self._capacity[ep.id] = blocks
            self.index.set_capacity(ep.id, blocks)
            self.approx_index.set_capacity(ep.id, blocks)

    # -- routing ---------------------------------------------------------------------------------------------
    async def route(
        self,
        model: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        endpoints: Sequence[EndpointState],
        *,
        profile: str | None = None,
    ) -> Decision:
        """Choose an endpoint for one request; raises NoEndpointError (HTTP 503) when none can take it."""
        started = time.perf_counter()
        candidates = self._candidates(model, endpoints)
        prof = self.profiles[profile or self.config.preset]
        request = self._request(model, body, headers, candidates)
        if prof.needs_tokens:
            sizes = sorted({endpoint_block_size(ep, self.deps) for ep in candidates})
            await self.tokens.prepare(request, body, candidates, sizes)
        ctx = SchedulingContext(now=self._clock(), preset=prof.name)
        picked, scored = run_profile(prof, ctx, request, candidates)
        ep = picked.endpoint
        tokens = prompt_tokens(request)
        matched = MATCHED_TOKENS.get(request) or {}
        cached = min(tokens, matched.get(ep.id, 0))
        reason = decision_reason(prof, ep.id, matched, len(scored))
        notify_routed(prof, request, ep)
        ticket = self.ledger.charge(ep, tokens - cached, body.get("stream") is True)
        decision = Decision(ep, reason, scored, prof.name, tokens, cached, ticket, matched)
        self.counters.decided(decision, time.perf_counter() - started)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("route %s", decision.explain())
        return decision

    def _candidates(self, model: str, endpoints: Sequence[EndpointState]) -> list[EndpointState]:
        if not endpoints:
            raise NoEndpointError(f"no endpoint serves model {model!r}")
        for ep in endpoints:
            self._sync_capacity(ep)
        serving = [ep for ep in endpoints if not ep.models or model in ep.models or model in ep.lora_adapters]
        return serving or list(endpoints)  # the proxy already matched the model; trust it over stale lists

    def _request(
        self,
        model: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        candidates: Sequence[EndpointState],
    ) -> RoutingRequest:
        session = _header(headers, self.config.session_header)
        lora = (
            model if any(model in ep.lora_adapters and model not in ep.models for ep in candidates) else None
        )
        request = RoutingRequest(
            model=model, prompt_text=prompt_text(body), headers=headers, session_id=session, lora=lora
        )
        request.prompt_token_ids = prompt_token_ids(body)  # `prompt: [ids]` needs no tokenizer
        salt = body.get("cache_salt")
        if isinstance(salt, str) and salt:
            CACHE_SALT.put(request, salt)
        return request

    def on_first_token(self, decision: Decision) -> None:
        """The prompt is prefilled: release its uncached tokens from the endpoint's in-flight load."""
        self.ledger.first_token(decision)

    def on_finish(self, decision: Decision, ok: bool) -> None:
        """The request ended (success, error or client disconnect): release what is left of its load."""
        if self.ledger.finish(decision) and not ok:
            self.counters.failed(decision.preset)

    # -- introspection ---------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Numbers for /metrics and logs: index sizes, predicted hit ratio, event lag, decisions."""
        subs = self.kv_feed.stats()
        lags = [s["lag_s"] for s in subs.values() if s["lag_s"] is not None]
        counters = self.counters.as_dict()
        return {
            "preset": self.config.preset,
            "tokenizer": self.tokenizer.name,
            "index_blocks": self.index.size(),
            "approx_index_blocks": self.approx_index.size(),
            "index": self.index.stats(),
            "predicted_hit_ratio": counters["predicted_hit_ratio"],
            "event_lag_s_max": max(lags) if lags else None,
            "subscribers": subs,
            "decisions": counters["decisions"],
            "route_ms_mean": counters["route_ms_mean"],
            "route_ms_max": counters["route_ms_max"],
            "tokenize_failures": self.tokens.failures,
        }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value or None
