"""The router facade the proxy calls: owns the prefix indexes, the KV-event subscribers, the tokenizer and the
scheduling profiles, and turns one request into one explainable `Decision`.

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

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq.asyncio

from eksinfer.gateway.scheduling.config import RoutingConfig
from eksinfer.gateway.scheduling.framework import (
    Decision,
    EndpointState,
    InflightTicket,
    RoutingRequest,
    SchedulingContext,
    ScoredEndpoint,
)
from eksinfer.gateway.scheduling.prefix import (
    endpoint_block_size,
    hash_request,
    precise_matches,
    prompt_tokens,
    request_block_keys,
)
from eksinfer.gateway.scheduling.registry import PluginDeps, Registry
from eksinfer.gateway.scheduling.runner import (
    NoEndpointError,
    Profile,
    build_profiles,
    notify_routed,
    run_profile,
)
from eksinfer.gateway.tokenize import (
    EngineTokenizer,
    HfPromptTokenizer,
    PromptTokenizer,
    make_tokenizer,
    prompt_text,
    prompt_token_ids,
)
from eksinfer.gateway.upstream import UpstreamPool
from eksinfer.kvcache.index import PrefixIndex
from eksinfer.kvcache.subscriber import KvEventSubscriber, replay_endpoint_for

log = logging.getLogger(__name__)

__all__ = ["Decision", "NoEndpointError", "Router"]

# Key chains longer than this are hashed in a worker thread: 16k tokens take about 0.5 ms inline (measured
# 0.24 ms per 8,192 tokens at block size 16 on this machine), about what a thread hop costs.
HASH_OFFLOAD_TOKENS = 16384


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
        self.deps = PluginDeps(self.index, self.approx_index, random.Random(config.seed), config.block_size)
        self.profiles: dict[str, Profile] = build_profiles(config, self.deps, registry)
        self._pool: UpstreamPool | None = None
        self.tokenizer = tokenizer or make_tokenizer(config, self._engine_pool)
        self._tokenizer_ready: asyncio.Task[Any] | None = None
        self._subscribers: dict[str, KvEventSubscriber] = {}
        self._zmq: zmq.asyncio.Context | None = None
        self._capacity: dict[str, int] = {}
        self._started = False
        self._decisions: Counter[tuple[str, str]] = Counter()
        self._prompt_tokens_total = 0
        self._predicted_cached_total = 0
        self._route_s_total = 0.0
        self._route_s_max = 0.0
        self._tokenize_failures = 0

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start background work; call from inside the running event loop."""
        if self._started:
            return
        self._started = True
        if isinstance(self.tokenizer, HfPromptTokenizer):
            self._tokenizer_ready = asyncio.get_running_loop().create_task(
                asyncio.to_thread(self.tokenizer.load)
            )
        for sub in self._subscribers.values():
            sub.start()

    async def stop(self) -> None:
        self._started = False
        subs = list(self._subscribers.values())
        self._subscribers.clear()
        await asyncio.gather(*(s.stop() for s in subs), return_exceptions=True)
        if self._zmq is not None:
            self._zmq.destroy(linger=0)
            self._zmq = None
        if self._tokenizer_ready is not None and not self._tokenizer_ready.done():
            self._tokenizer_ready.cancel()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _engine_pool(self) -> UpstreamPool:
        """Connections for the engine tokenizer's `/tokenize` calls, opened on first use."""
        if self._pool is None:
            self._pool = UpstreamPool(connect_timeout_s=self.config.tokenizer.engine_timeout_s)
        return self._pool

    # -- endpoints -------------------------------------------------------------------------------------------
    def endpoint_added(
        self, state: EndpointState, kv_events: str | None = None, kv_replay: str | None = None
    ) -> None:
        """Track an endpoint; with `kv_events` (its ZMQ PUB address) subscribe to its KV events."""
        self._sync_capacity(state)
        old = self._subscribers.pop(state.id, None)
        if old is not None:
            asyncio.get_running_loop().create_task(old.stop())
        if not kv_events:
            return
        ev = self.config.events
        replay = kv_replay or replay_endpoint_for(kv_events, ev.replay_port_offset)
        if self._zmq is None:
            self._zmq = zmq.asyncio.Context()  # one context (one I/O thread) for every subscriber
        sub = KvEventSubscriber(
            state.id,
            kv_events,
            replay,
            on_event=self.index.apply_event,
            on_reset=self.index.clear_endpoint,
            topic=ev.topic,
            reconnect_s=ev.reconnect_s,
            replay_timeout_s=ev.replay_timeout_s,
            silence_reconnect_s=ev.silence_reconnect_s,
            probe_s=ev.probe_s,
            context=self._zmq,
        )
        self._subscribers[state.id] = sub
        if self._started:
            sub.start()

    def endpoint_removed(self, endpoint_id: str) -> None:
        sub = self._subscribers.pop(endpoint_id, None)
        if sub is not None:
            asyncio.get_running_loop().create_task(sub.stop())
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
            await self._prepare_tokens(request, body, candidates)
        ctx = SchedulingContext(now=self._clock(), preset=prof.name)
        picked, scored = run_profile(prof, ctx, request, candidates)
        decision = self._commit(prof, request, picked, scored)
        elapsed = time.perf_counter() - started
        self._route_s_total += elapsed
        self._route_s_max = max(self._route_s_max, elapsed)
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
            request.annotations["cache_salt"] = salt
        return request

    async def _prepare_tokens(
        self, request: RoutingRequest, body: Mapping[str, Any], candidates: Sequence[EndpointState]
    ) -> None:
        """Tokenize and hash the prompt: inline when short, in a worker thread when long."""
        if self._tokenizer_ready is not None and not self._tokenizer_ready.done():
            try:
                await self._tokenizer_ready
            except Exception as err:  # a broken tokenizer directory degrades to approximate matching
                log.warning("tokenizer failed to load: %s", err)
        sizes = sorted({endpoint_block_size(ep, self.deps) for ep in candidates})
        if request.prompt_token_ids is not None:  # ids given: only the key chain (about 0.03 us per token)
            if len(request.prompt_token_ids) > HASH_OFFLOAD_TOKENS:
                await asyncio.to_thread(hash_request, request, sizes)
            else:
                hash_request(request, sizes)
            return
        long_prompt = len(request.prompt_text) > self.config.tokenizer.offload_chars
        tok = self.tokenizer
        if tok.local and self._tokenizer_usable():
            if long_prompt:
                await asyncio.to_thread(_tokenize_and_hash, tok, body, request, sizes)
            else:
                _tokenize_and_hash(tok, body, request, sizes)
        elif not tok.local:
            ids = await tok.encode_remote(body, request.model, _pick_tokenize_url(candidates))
            request.prompt_token_ids = ids
            if ids is not None and len(ids) > HASH_OFFLOAD_TOKENS:
                await asyncio.to_thread(hash_request, request, sizes)
        if request.prompt_token_ids is None:
            self._tokenize_failures += isinstance(tok, EngineTokenizer)

    def _tokenizer_usable(self) -> bool:
        task = self._tokenizer_ready
        return task is None or (task.done() and not task.cancelled() and task.exception() is None)

    def _commit(
        self,
        prof: Profile,
        request: RoutingRequest,
        picked: ScoredEndpoint,
        scored: tuple[ScoredEndpoint, ...],
    ) -> Decision:
        """Record the decision: speculative index entries, in-flight ticket, counters."""
        ep = picked.endpoint
        tokens = prompt_tokens(request)
        matched = self._matched_tokens(request, scored)
        cached = min(tokens, matched.get(ep.id, 0))
        reason = _reason(prof, ep.id, matched, len(scored))
        if prof.needs_tokens:
            self._insert_routed(request, ep)
        notify_routed(prof, request, ep)
        ticket = InflightTicket(prompt_tokens=tokens - cached)
        ep.inflight_requests += 1
        ep.inflight_prompt_tokens += ticket.prompt_tokens
        self._decisions[(prof.name, reason)] += 1
        self._prompt_tokens_total += tokens
        self._predicted_cached_total += cached
        return Decision(ep, reason, scored, prof.name, tokens, cached, ticket)

    def _matched_tokens(self, request: RoutingRequest, scored: Sequence[ScoredEndpoint]) -> dict[str, int]:
        """Predicted cached prompt tokens per candidate: precise when tokenized, else approximate blocks."""
        eps = [s.endpoint for s in scored]
        if request.prompt_token_ids is not None and "precise_match" in request.annotations:
            return precise_matches(request, eps, self.deps) or {}
        approx: dict[str, int] | None = request.annotations.get("approx_match")
        if approx:
            return {eid: n * self.deps.block_size for eid, n in approx.items()}
        return {}

    def _insert_routed(self, request: RoutingRequest, ep: EndpointState) -> None:
        """Speculatively index the routed prompt's blocks on the chosen endpoint (short TTL: the engine's
        events confirm them), and record them in the approximate index when a profile uses it."""
        if request.prompt_token_ids is not None:
            keys = request_block_keys(request, endpoint_block_size(ep, self.deps))
            if keys:
                self.index.insert(ep.id, keys, ttl_s=self.config.index.speculative_ttl_s)
        approx_keys = request.annotations.get("approx_keys")
        if approx_keys:
            self.approx_index.insert(ep.id, approx_keys, ttl_s=None)

    def on_first_token(self, decision: Decision) -> None:
        """The prompt is prefilled: release its uncached tokens from the endpoint's in-flight load."""
        ticket = decision.ticket
        if ticket is None or ticket.prompt_released:
            return
        ticket.prompt_released = True
        ep = decision.endpoint
        ep.inflight_prompt_tokens = max(0, ep.inflight_prompt_tokens - ticket.prompt_tokens)

    def on_finish(self, decision: Decision, ok: bool) -> None:
        """The request ended (success, error or client disconnect): release what is left of its load."""
        self.on_first_token(decision)
        ticket = decision.ticket
        if ticket is None or ticket.finished:
            return
        ticket.finished = True
        ep = decision.endpoint
        ep.inflight_requests = max(0, ep.inflight_requests - 1)
        if not ok:
            self._decisions[(decision.preset, "failed")] += 1

    # -- introspection ---------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Numbers for /metrics and logs: index sizes, predicted hit ratio, event lag, decisions."""
        subs = {eid: s.stats.as_dict() for eid, s in self._subscribers.items()}
        lags = [s["lag_s"] for s in subs.values() if s["lag_s"] is not None]
        routed = sum(n for (_, reason), n in self._decisions.items() if reason != "failed")
        return {
            "preset": self.config.preset,
            "tokenizer": self.tokenizer.name,
            "index_blocks": self.index.size(),
            "approx_index_blocks": self.approx_index.size(),
            "index": self.index.stats(),
            "predicted_hit_ratio": (
                self._predicted_cached_total / self._prompt_tokens_total if self._prompt_tokens_total else 0.0
            ),
            "event_lag_s_max": max(lags) if lags else None,
            "subscribers": subs,
            "decisions": {f"{preset}/{reason}": n for (preset, reason), n in sorted(self._decisions.items())},
            "route_ms_mean": 1000 * self._route_s_total / routed if routed else 0.0,
            "route_ms_max": 1000 * self._route_s_max,
            "tokenize_failures": self._tokenize_failures,
        }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value or None


def _pick_tokenize_url(candidates: Sequence[EndpointState]) -> str:
    """Any healthy endpoint tokenizes identically; take the one with the least in-flight work."""
    healthy = [ep for ep in candidates if ep.healthy] or list(candidates)
    return min(healthy, key=lambda ep: ep.inflight_requests).url


def _tokenize_and_hash(
    tok: PromptTokenizer, body: Mapping[str, Any], request: RoutingRequest, sizes: Sequence[int]
) -> None:
    """CPU-bound part of routing (tokenizer + key chain): runs inline or in a worker thread."""
    try:
        request.prompt_token_ids = tok.encode_body(body)
    except Exception as err:  # a template error on odd input must not fail the request: route approximately
        log.debug("tokenization failed, routing approximately: %s", err)
        request.prompt_token_ids = None
    if request.prompt_token_ids is not None:
        hash_request(request, sizes)


def _reason(prof: Profile, chosen: str, matched: Mapping[str, int], num_candidates: int) -> str:
    """Why this endpoint, in one word: for the decisions-by-reason metric and the debug header."""
    if prof.picker_type in ("round-robin-picker", "random-picker"):
        return prof.picker_type.removesuffix("-picker")
    if num_candidates == 1:
        return "only-candidate"
    best = max(matched.values(), default=0)
    if best <= 0:
        return "cold" if prof.needs_tokens else "least-load"
    return "prefix-hit" if matched.get(chosen, 0) >= best else "load-gate"
