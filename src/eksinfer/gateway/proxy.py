"""The request pipeline: admit (auth, limits, parse) -> cascade (pool by pool, attempt by attempt) -> forward
(stream the engine's bytes through as they arrive, never buffered).

Forwarding rules:
- the raw request body goes to the engine unchanged (no re-serialisation); `_request_bytes` is the one place
  that decides what is sent to the chosen endpoint (a continuation changes it there), and `_post` hands it
  to the P/D hook, which may run the prefill hop and send the decode body instead (gateway/pd/);
- the answer is copied chunk by chunk, so an SSE stream reaches the client token by token;
- the engine is called through `upstream.UpstreamPool` (keep-alive connections, httptools parser);
- timeouts: connect, first bytes from the engine (per attempt), and silence between two chunks;
- a client that disconnects cancels the handler (aiohttp `handler_cancellation`), which closes the upstream
  connection, which makes vLLM abort the request and free its KV blocks.

Resilience (`gateway/resilience/`, docs/gateway.md "Resilience"): a model's cascade is tried tier by tier;
inside a tier, a retryable failure before the commit point (the first content byte sent to the client) is
retried on another endpoint after a backoff, while the per-pool and per-request attempt limits and the
gateway-wide retry budget allow; a fall-back-worthy condition moves to the next tier; a terminal answer goes
to the client as it is. Every attempt's outcome feeds the outlier detector and the pool's circuit breaker.
After the commit point a broken stream continues on another endpoint or tier (models with
`continue_streams`) or ends with an in-band SSE error event.

In-flight work per endpoint is added by the router when it decides and released through `on_first_token` /
`on_finish`, which the proxy calls exactly once each per attempt, on every path.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
from aiohttp import web

from eksinfer.errors import EksinferError
from eksinfer.gateway.apis import APIS, Api, LoraAdmin, ResponsePins, as_chat
from eksinfer.gateway.config import ServerConfig
from eksinfer.gateway.endpoints import EndpointRegistry
from eksinfer.gateway.http import (
    SSE_DONE,
    ApiKeys,
    RequestRefused,
    error_for,
    error_response,
    sse_error_event,
    sse_event,
)
from eksinfer.gateway.metrics import GatewayMetrics
from eksinfer.gateway.observe import RequestObserver
from eksinfer.gateway.resilience.breaker import BreakerState, CircuitBreaker
from eksinfer.gateway.resilience.cascade import Cascade, ModelPlan, PromptCost, Tier, request_tokens
from eksinfer.gateway.resilience.config import ResilienceConfig
from eksinfer.gateway.resilience.errors import ErrorClass, FailureKind, SkipReason, classify_status
from eksinfer.gateway.resilience.layer import ManagedClient, Resilience
from eksinfer.gateway.resilience.stall import Watched
from eksinfer.gateway.resilience.stall import grace_s as stall_grace_s
from eksinfer.gateway.resilience.stream import (
    ContinuationFilter,
    EngineError,
    EventGuard,
    SentText,
    continuation_body,
    is_opening_only,
    without_role,
)
from eksinfer.gateway.scheduling.framework import Decision, EndpointState
from eksinfer.gateway.upstream import (
    EngineLinkError,
    UpstreamBrokenError,
    UpstreamConnectError,
    UpstreamPool,
    UpstreamResponse,
)
from eksinfer.gateway.usage import StreamTokens, completion_tokens
from eksinfer.guarded_http import BodyTimeoutError, read_body
from eksinfer.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

OFF_LOOP_DECODE_BYTES = 1 << 20  # msgspec decodes ~1 GB/s: from 1 MiB (~1 ms) a body is decoded in a thread
WHOLE_BODY_BYTES = 1 << 20  # non-streamed answers up to 1 MiB with a Content-Length are sent in one write
_FORWARD_HEADERS = ("x-request-id", "traceparent", "tracestate")
POOL_HEADER = "x-eksinfer-pool"  # which pool answered: a pool name, not an address, so always sent
_CONTINUABLE = ("/v1/chat/completions", "/v1/completions")
_SSE_EVENT = "text/event-stream; event"  # a `_Failed` body that is the engine's own error event


class RouterLike(Protocol):
    """What the proxy needs from `eksinfer.gateway.routing.Router`."""

    async def route(
        self,
        model: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        endpoints: Sequence[EndpointState],
        *,
        profile: str | None = None,
    ) -> Decision: ...

    def on_first_token(self, decision: Decision) -> None: ...

    def on_finish(self, decision: Decision, ok: bool) -> None: ...


class SendLike(Protocol):
    """What a P/D hook returns: the bytes for the chosen endpoint, one explanation, and `post`, which sends
    them and gives the answer as the client must read it."""

    @property
    def body(self) -> bytes: ...

    @property
    def explain(self) -> str: ...

    async def post(
        self, upstream: UpstreamPool, url: str, path: str, headers: dict[str, str]
    ) -> UpstreamResponse: ...


class PdHook(Protocol):
    """What the proxy needs from `eksinfer.gateway.pd.coordinator.PdCoordinator` (docs/gateway.md, P/D)."""

    def disaggregated(self, model: str) -> bool: ...

    def decode_candidates(self, model: str, candidates: Sequence[EndpointState]) -> list[EndpointState]: ...

    async def prepare(
        self, path: str, raw: bytes, decision: Decision, model: str, headers: Mapping[str, str]
    ) -> SendLike | None: ...


@dataclass(slots=True)
class _Flight:
    """One attempt on one endpoint: what to release when it ends."""

    decision: Decision
    model: str
    started: float
    first_token: bool = False
    done: bool = False
    ok: bool = False
    wrote: bool = False  # this attempt sent bytes to the client
    note: str = ""  # the P/D hook's explanation of the prefill hop, appended to the route header
    watched: Watched | None = None  # what the stall watchdog sees of this attempt
    breaker: CircuitBreaker | None = None  # the pool's, told of the first byte (a half-open trial's verdict)


@dataclass(slots=True)
class _Call:
    """One client request across all its attempts."""

    request: web.Request
    api: Api
    model: str
    raw: bytes
    body: dict[str, Any]
    view: Mapping[str, Any]
    started: float
    plan: ModelPlan
    tried: set[str] = field(default_factory=set)
    attempts: int = 0
    response: web.StreamResponse | None = None  # set once the client has (or will get) an answer
    committed: bool = False  # the client has part of a stream
    sent: SentText | None = None  # text relayed so far, for models that continue broken streams
    status: str = "000"
    endpoint: EndpointState | None = None
    pool: str = ""
    failure: _Failed | None = None  # the last failure before the commit point
    failed_on: EndpointState | None = None  # where the last attempt failed
    skips: list[tuple[str, SkipReason]] = field(default_factory=list)
    pin: EndpointState | None = None  # the engine holding the stored conversation it continues (apis.py)
    attempt_started: float = 0.0  # perf_counter when the current managed attempt was sent


class _Failed(Exception):
    """One attempt failed; `cls` says what may follow (retry, fallback, or the answer as it is)."""

    def __init__(
        self,
        kind: FailureKind,
        cls: ErrorClass,
        status: int,
        message: str,
        code: str,
        *,
        body: bytes | None = None,
        content_type: str = "application/json",
        mid_stream: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind, self.cls, self.status, self.message, self.code = kind, cls, status, message, code
        self.body, self.content_type, self.mid_stream = body, content_type, mid_stream


class Proxy:
    """aiohttp handlers for the OpenAI routes; one instance per runtime."""

    def __init__(
        self,
        config: ServerConfig,
        registry: EndpointRegistry,
        router: RouterLike,
        metrics: GatewayMetrics,
        upstream: UpstreamPool,
        keys: ApiKeys,
        preset: str,
        resilience: Resilience | None = None,
        *,
        observer: RequestObserver | None = None,
        pd: PdHook | None = None,
    ) -> None:
        self._config = config
        self._observe = observer if observer is not None else RequestObserver.off()
        self._registry = registry
        self._router = router
        self._metrics = metrics
        self._upstream = upstream
        self._keys = keys
        self._preset = preset
        self._pd = pd
        self._res = resilience or Resilience(ResilienceConfig(), Cascade({}, {}))
        self._retries = self._res.config.retries
        self._managed_models = self._res.managed_models()
        self._inflight = 0
        self._warn = RateLimitedLog(log)
        config_of_router = getattr(router, "config", None)
        self._debug_header: str | None = getattr(config_of_router, "debug_header", "x-eksinfer-route")
        self._route_headers = config.route_headers  # off by default: they expose pod addresses
        self._pins = ResponsePins(config, registry, upstream, keys, metrics)  # stored Responses' engines

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def resilience(self) -> Resilience:
        return self._res

    def routes(self) -> list[web.RouteDef]:
        posts = [
            web.post(api.path, self._observe.wrap(functools.partial(self._handle, api=api))) for api in APIS
        ]
        if self._config.lora_adapter_routes:  # vLLM's runtime LoRA routes, sent to every engine
            posts += LoraAdmin(
                self._config, self._registry, self._upstream, self._keys, self._metrics
            ).routes()
        return [*posts, *self._pins.routes(), web.get("/v1/models", self.models)]

    async def models(self, request: web.Request) -> web.StreamResponse:
        if not self._keys.check(request.headers):
            return error_response(401, "invalid or missing API key", code="invalid_api_key")
        cards = self._registry.model_cards()
        listed = {c["id"] for c in cards}
        cards += [
            {"id": m, "object": "model", "owned_by": "eksinfer"}
            for m in sorted(self._managed_models - listed)
        ]
        body = msgspec.json.encode({"object": "list", "data": cards})
        return web.Response(body=body, content_type="application/json")

    async def _handle(self, request: web.Request, *, api: Api) -> web.StreamResponse:
        started = time.perf_counter()
        path = api.path
        if not self._keys.check(request.headers):
            return self._finish_early(path, 401, "invalid or missing API key", "invalid_api_key")
        if self._inflight >= self._config.max_inflight:
            msg = "the gateway is at its in-flight limit; retry later"
            return self._finish_early(path, 429, msg, "overloaded")
        self._inflight += 1  # from the first body byte: a slow body holds a slot like a slow answer does
        try:
            raw, body, model = await self._admit(request, api.fields)
            view = as_chat(body) if api.chat_like else body
            call = _Call(request, api, model, raw, body, view, started, self._res.cascade.plan(model))
            call.pin = await self._pins.pin(api.path, body, model)
            return await self._dispatch(call)
        except EksinferError as err:  # refused, or no route: `error_for` is the one map to a status
            status, code, param = error_for(err)
            return self._finish_early(path, status, str(err), code, param)
        except Exception:  # a bug must still give the client one OpenAI-style line, never a traceback
            log.exception("internal error on %s", path)
            return self._finish_early(path, 500, "internal gateway error", "internal_error")
        finally:
            self._inflight -= 1

    async def _admit(
        self, request: web.Request, fields: tuple[str, ...]
    ) -> tuple[bytes, dict[str, Any], str]:
        """Body limit and deadline, JSON and the fields routing needs; raises `RequestRefused` otherwise."""
        limit = self._config.max_body_bytes
        too_large = RequestRefused(413, f"request body is larger than {limit} bytes", "body_too_large")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            raw = await read_body(request, self._config.body_timeout_s)
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        except BodyTimeoutError as err:
            raise RequestRefused(408, str(err), "body_timeout") from None
        try:
            if len(raw) >= OFF_LOOP_DECODE_BYTES:
                body = await asyncio.to_thread(msgspec.json.decode, raw)
            else:
                body = msgspec.json.decode(raw)
        except msgspec.DecodeError as err:
            raise RequestRefused(400, f"request body is not valid JSON: {err}", "invalid_json") from None
        except RecursionError:  # msgspec recurses once per nesting level: a bracket bomb ends here
            raise RequestRefused(400, "request body is nested too deeply", "invalid_json") from None
        if not isinstance(body, dict):
            raise RequestRefused(400, "request body must be a JSON object", "invalid_json")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise RequestRefused(400, "'model' is required and must be a string", None, param="model")
        field_ = next((f for f in fields if body.get(f) is not None), fields[0])
        value = body.get(field_)
        if value is None or (field_ == "messages" and (not isinstance(value, list) or not value)):
            kind = "a non-empty list" if field_ == "messages" else "present"
            either = " or ".join(f"'{f}'" for f in fields)
            msg = f"{either} is required" if value is None else f"'{field_}' is required and must be {kind}"
            raise RequestRefused(400, msg, None, param=field_)
        if not self._registry.known_model(model) and model not in self._managed_models:
            msg = f"the model '{model}' does not exist"
            raise RequestRefused(404, msg, "model_not_found", param="model")
        return raw, body, model

    # --- the cascade ----------------------------------------------------------------------------------
    async def _dispatch(self, call: _Call) -> web.StreamResponse:
        budget = self._res.budget
        budget.active_requests += 1
        try:
            response = await self._cascade(call)
        except asyncio.CancelledError:
            call.status = "499"  # the client went away (nginx's code for it)
            raise
        finally:
            budget.active_requests -= 1
            elapsed = time.perf_counter() - call.started
            self._metrics.observe_request(
                call.api.path, call.model, call.endpoint, call.status, elapsed, pool=call.pool
            )
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "request %s model=%s pool=%s status=%s attempts=%d skipped=%s",
                    call.api.path,
                    call.model,
                    call.pool or "-",
                    call.status,
                    call.attempts,
                    ",".join(f"{p or '*'}:{r}" for p, r in call.skips) or "-",
                )
        return response

    async def _cascade(self, call: _Call) -> web.StreamResponse:
        tiers = call.plan.tiers
        if call.pin is not None:  # a stored conversation: its engine's pool only, no fallback (apis.py)
            tiers = (self._res.cascade.tier_of(call.pin.pool),)
        for i, tier in enumerate(tiers):
            if call.attempts >= self._retries.max_attempts:
                break
            last = i == len(tiers) - 1
            if tier.kind == "vllm":
                response = await self._try_pool(call, tier, last)
            else:
                response = await self._try_managed(call, tier, last)
            if response is not None:
                return response
        return await self._give_up(call)

    def _skip(self, call: _Call, tier: Tier, reason: SkipReason) -> web.StreamResponse | None:
        """Records why a tier passed the request on; returns None (the caller's "next tier")."""
        call.skips.append((tier.name, reason))
        self._metrics.observe_fallback(call.model, tier.name, reason)
        return None

    async def _try_pool(self, call: _Call, tier: Tier, last: bool) -> web.StreamResponse | None:
        """Attempts on one pool's endpoints; a response when done, None to move to the next tier."""
        res = self._res
        breaker = res.breaker(tier.pool) if tier.pool is not None else None
        if breaker is not None and not breaker.allow():
            if not last:
                return self._skip(call, tier, SkipReason.CIRCUIT_OPEN)
            breaker = None  # the last tier: nowhere else to go, so try it anyway (breaker.py)
        in_tier = 0
        try:
            while in_tier < self._retries.attempts_per_pool and call.attempts < self._retries.max_attempts:
                exclude = _excluding(call.tried) if call.tried else None
                found = self._registry.candidates(call.model, exclude, pool=tier.pool)
                if self._pd is not None:  # a P/D model decodes on its decode pool only
                    found = self._pd.decode_candidates(call.model, found)
                candidates = res.detector.eligible(found) if found else found
                suspects = res.stalls.suspects
                if suspects and len(candidates) > 1:
                    candidates = [c for c in candidates if c.id not in suspects] or candidates
                if call.pin is not None:  # tried once, whatever its health: no other engine has the context
                    candidates = [] if call.pin.id in call.tried else [call.pin]
                if not candidates:
                    return self._skip(call, tier, SkipReason.EXHAUSTED if in_tier else SkipReason.NO_ENDPOINT)
                if in_tier == 0 and not last:
                    after = call.plan.tiers[call.plan.tiers.index(tier) + 1]
                    shed = res.cascade.shed_reason(
                        tier, call.plan, candidates, res.stalls.first_byte_waits, after
                    )
                    if shed is not None:
                        return self._skip(call, tier, shed)
                retry = in_tier > 0
                # A retry away from an endpoint the failure just ejected moves its share of the load, it does
                # not multiply it: no budget slot (the budget guards a pool whose endpoints all fail).
                budgeted = retry and not (
                    call.failed_on is not None and res.detector.is_ejected(call.failed_on)
                )
                if budgeted and not res.budget.try_acquire():
                    return self._skip(call, tier, SkipReason.BUDGET)
                if retry:
                    self._metrics.observe_retry(call.model)
                try:
                    if retry:
                        await self._backoff(in_tier)
                    decision = await self._route(call, tier, candidates)
                    if tier.max_context_tokens is not None and self._too_long(call, decision, tier):
                        self._router.on_finish(decision, True)
                        return self._skip(call, tier, SkipReason.CONTEXT)
                    if in_tier == 0 and not last and call.plan.ttft_slo_s is not None:
                        shed = self._shed_with_prompt(call, tier, candidates, decision)
                        if shed is not None:
                            self._router.on_finish(decision, True)
                            return self._skip(call, tier, shed)
                    self._observe.decided(call.model, decision)  # an attempt (not a skipped decision)
                    call.attempts += 1
                    in_tier += 1
                    try:
                        self._observe.attempt()
                        return await self._forward(call, decision, tier, breaker)
                    except _Failed as failed:
                        self._observe.attempt_failed(failed.kind)
                        self._attempt_failed(call, decision.endpoint, tier, breaker, failed)
                        if call.committed and not self._can_continue(call, failed):
                            return await self._end_stream(call, failed)
                        if failed.cls is ErrorClass.FALLBACK:
                            return self._skip(call, tier, SkipReason.FAILED)
                        if not last and breaker is not None and breaker.state is not BreakerState.CLOSED:
                            return self._skip(call, tier, SkipReason.CIRCUIT_OPEN)
                finally:
                    if budgeted:
                        res.budget.release()
            return self._skip(call, tier, SkipReason.EXHAUSTED)
        finally:
            if breaker is not None and in_tier == 0:
                breaker.abandon_trial()

    async def _backoff(self, retry: int) -> None:
        delay = self._res.backoff.delay_s(retry)
        self._observe.waited("backoff", delay)
        await self._res.sleep(delay)

    async def _route(self, call: _Call, tier: Tier, candidates: list[EndpointState]) -> Decision:
        routing_started = time.perf_counter()
        profile = call.api.profile or tier.preset
        if profile is None:
            decision = await self._router.route(call.model, call.view, call.request.headers, candidates)
        else:
            decision = await self._router.route(
                call.model, call.view, call.request.headers, candidates, profile=profile
            )
        self._metrics.observe_decision(
            call.model,
            decision.preset or self._preset,
            decision.reason,
            time.perf_counter() - routing_started,
            decision.prompt_tokens,
            decision.predicted_cached_tokens,
        )
        return decision

    def _shed_with_prompt(
        self, call: _Call, tier: Tier, candidates: list[EndpointState], decision: Decision
    ) -> SkipReason | None:
        """Shedding again once the router has counted the prompt: its prefill on each candidate (cascade.py);
        a P/D model prefills on another pool, so only the queue counts."""
        res = self._res
        after = call.plan.tiers[call.plan.tiers.index(tier) + 1]
        remote = self._pd is not None and self._pd.disaggregated(call.model)
        prompt = None if remote else PromptCost.of(decision)
        waits = res.stalls.first_byte_waits
        return res.cascade.shed_reason(tier, call.plan, candidates, waits, after, prompt)

    def _too_long(self, call: _Call, decision: Decision, tier: Tier) -> bool:
        assert tier.max_context_tokens is not None
        chars = len(call.raw)  # an upper bound of the prompt's characters when the router did not count
        return request_tokens(call.body, decision.prompt_tokens, chars) > tier.max_context_tokens

    def _attempt_failed(
        self, call: _Call, ep: EndpointState, tier: Tier, breaker: CircuitBreaker | None, failed: _Failed
    ) -> None:
        """Books a failed attempt: outlier detector, breaker, metrics; remembers it for the final answer."""
        call.tried.add(ep.id)
        call.failed_on = ep
        if failed.status != 429:  # an engine that says it is busy is not faulty: do not eject it for load
            members = self._registry.pool_members(ep.pool)
            self._res.detector.record_failure(ep, members)
            if breaker is not None:
                breaker.record_failure(ep.id, len(members))
        self._metrics.observe_attempt_failure(call.model, ep.pool, failed.kind)
        if not failed.mid_stream:
            call.failure = failed
        if failed.kind is not FailureKind.TIMEOUT:  # timeouts have their own line
            self._warn.warning(
                f"attempt {ep.id}", "attempt on %s failed (%s): %s", ep.id, failed.kind, failed.message
            )

    def _can_continue(self, call: _Call, failed: _Failed) -> bool:
        """After the commit point: continue elsewhere (opt-in per model), or end with an error event."""
        if not failed.mid_stream and call.sent is not None:
            return True  # a continuation attempt failed before its first byte: try the next one
        sent = call.sent
        if sent is None or not call.plan.continue_streams:
            return False
        body = continuation_body(
            call.body, call.api.path.endswith("/chat/completions"), sent, engine_options=True
        )
        return body is not None

    async def _end_stream(self, call: _Call, failed: _Failed) -> web.StreamResponse:
        assert call.response is not None
        self._metrics.observe_stream_break(call.model, call.pool, "error_event")
        try:
            event = failed.body if failed.content_type == _SSE_EVENT else None
            await _close_stream(call.response, failed.status, failed.message, failed.code, event)
        except ConnectionResetError:
            call.status = "499"
        return call.response

    async def _give_up(self, call: _Call) -> web.StreamResponse:
        """Every tier was tried or skipped: the clearest error for what happened."""
        if call.committed:
            broke = call.failure or _Failed(
                FailureKind.BROKEN,
                ErrorClass.RETRYABLE,
                502,
                "no endpoint could continue the stream",
                "upstream_broken",
            )
            return await self._end_stream(call, broke)
        failed = call.failure
        if call.pin is not None and failed is not None and failed.body is None:  # the engine was not reached
            call.status = "503"
            call.response = self._pins.unavailable(call.pin, call.body)
            return call.response
        if failed is not None and failed.body is not None:
            call.status = str(failed.status)  # the engine's own error, as it sent it
            response = web.Response(
                status=failed.status, body=failed.body, headers={"Content-Type": failed.content_type}
            )
        elif failed is not None:
            call.status = str(failed.status)
            response = error_response(failed.status, failed.message, code=failed.code)
        else:
            reasons = {r for _, r in call.skips}
            if reasons == {SkipReason.CONTEXT}:
                call.status = "400"
                msg = "the request is longer than the context window of every pool serving this model"
                response = error_response(400, msg, code="context_length_exceeded", param="messages")
            elif SkipReason.CIRCUIT_OPEN in reasons:
                call.status = "503"
                msg = f"every pool serving model '{call.model}' is failing; retry later"
                response = error_response(503, msg, code="circuit_open")
            else:
                call.status = "503"
                msg = f"no healthy endpoint serves model '{call.model}'"
                response = error_response(503, msg, code="no_endpoint")
        call.response = response
        return response

    def _finish_early(
        self,
        path: str,
        status: int,
        message: str,
        code: str | None,
        param: str | None = None,
        model: str = "",
    ) -> web.Response:
        """An answer without an engine. `model` stays "" until the request is admitted: a client-chosen name
        must not become a label value."""
        self._metrics.observe_request(path, model, None, str(status), None)
        response = error_response(status, message, code=code, param=param)
        if status == 408:
            response.force_close()  # the rest of the body may still be on its way: the connection is spent
        return response

    # --- one attempt on an engine ------------------------------------------------------------------------
    def _first_token(self, flight: _Flight) -> None:
        if not flight.first_token:
            flight.first_token = True
            self._router.on_first_token(flight.decision)

    def _end(self, flight: _Flight, ok: bool) -> None:
        if not flight.done:
            flight.done = True
            self._router.on_finish(flight.decision, ok)

    def _upstream_headers(self, request: web.Request) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        for name in _FORWARD_HEADERS:
            value = request.headers.get(name)
            if value is not None:
                headers[name] = value
        self._observe.upstream_headers(headers)
        return headers

    def _headers(self, pool: str, decision: Decision | None, note: str = "") -> dict[str, str]:
        headers = {POOL_HEADER: pool}
        if self._route_headers and decision is not None:
            headers["x-eksinfer-endpoint"] = decision.endpoint.id
            if self._debug_header:
                headers[self._debug_header] = decision.explain() + (f"; {note}" if note else "")
        return headers

    async def _request_bytes(self, call: _Call, decision: Decision) -> bytes:
        """The one place that decides the bytes sent to the chosen endpoint: the client's body unchanged, or
        the continuation of a stream that broke. Async so that a step with I/O (a P/D prefill hop that returns
        the decode request's bytes) is one awaited call here."""
        if call.committed and call.sent is not None:
            chat = call.api.path.endswith("/chat/completions")
            body = continuation_body(call.body, chat, call.sent, engine_options=True)
            if body is not None:
                return msgspec.json.encode(body)
        return call.raw

    async def _forward(
        self, call: _Call, decision: Decision, tier: Tier, breaker: CircuitBreaker | None
    ) -> web.StreamResponse:
        """Sends the request to the chosen endpoint and copies the answer back as it arrives; raises `_Failed`
        when the attempt failed (before the commit point, or a stream broken after it)."""
        ep = decision.endpoint
        flight = _Flight(decision, call.model, time.perf_counter(), breaker=breaker)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("route %s -> %s (%s, pool %s)", call.api.path, ep.id, decision.reason, ep.pool)
        data = await self._request_bytes(call, decision)
        stalls = self._res.stalls
        try:
            async with asyncio.timeout(self._config.first_token_timeout_s) as deadline:
                try:
                    upstream = await self._post(call, flight, data, deadline)
                except UpstreamConnectError as err:
                    ep.healthy = False
                    self._registry.health_changed(ep, False)
                    msg = "no endpoint could be reached for this request"
                    raise _Failed(
                        FailureKind.CONNECT, ErrorClass.RETRYABLE, 502, msg, "upstream_failed"
                    ) from err
                try:
                    kind = classify_status(upstream.status)
                    if call.committed and kind is ErrorClass.TERMINAL:
                        kind = (
                            ErrorClass.FALLBACK
                        )  # the continuation was refused here: another tier may take it
                    if kind is ErrorClass.RETRYABLE or kind is ErrorClass.FALLBACK:
                        body = await upstream.read()
                        ctype = upstream.headers.get("content-type", "application/json")
                        msg = f"endpoint {ep.id} answered HTTP {upstream.status}"
                        raise _Failed(
                            FailureKind.STATUS,
                            kind,
                            upstream.status,
                            msg,
                            "upstream_error",
                            body=body,
                            content_type=ctype,
                        )
                    await self._relay(call, upstream, flight, deadline)
                    flight.ok = upstream.status < 500
                finally:
                    upstream.close()
        except TimeoutError:
            stage = "its stream (idle)" if flight.wrote else "its first bytes"
            self._warn.warning(f"504 {ep.id}", "endpoint %s timed out on %s: 504", ep.id, stage)
            if flight.wrote:
                msg = "the engine stopped sending"
                raise _Failed(
                    FailureKind.TIMEOUT, ErrorClass.RETRYABLE, 504, msg, "upstream_timeout", mid_stream=True
                ) from None
            msg = f"endpoint {ep.id} did not answer within {self._config.first_token_timeout_s:g} s"
            if flight.watched is not None and flight.watched.expired:
                msg = f"endpoint {ep.id} stalled: no byte from it for {stalls.stall_after_s:g} s"
            raise _Failed(FailureKind.TIMEOUT, ErrorClass.RETRYABLE, 504, msg, "upstream_timeout") from None
        except EngineLinkError as err:  # the whole answer could not be read (non-streamed), nothing sent yet
            raise _Failed(
                FailureKind.BROKEN,
                ErrorClass.RETRYABLE,
                502,
                "the engine closed the connection early",
                "upstream_broken",
            ) from err
        except ConnectionResetError:
            call.status = "499"  # the client went away while we wrote to it
            flight.ok = True  # not the engine's fault
        finally:
            if flight.watched is not None:
                stalls.remove(flight.watched)
            self._end(flight, flight.ok)
            if flight.ok:
                self._res.detector.record_success(ep)
                if breaker is not None:
                    breaker.record_success()
        assert call.response is not None
        return call.response

    async def _post(
        self, call: _Call, flight: _Flight, data: bytes, deadline: asyncio.Timeout
    ) -> UpstreamResponse:
        """Posts `data` to the chosen endpoint; for a model with a P/D profile the hook may first run the
        prefill hop and give the decode body (kv_transfer_params) instead. A continuation is never split."""
        ep = flight.decision.endpoint
        headers = self._upstream_headers(call.request)
        send = None
        if self._pd is not None and not call.committed:
            send = await self._pd.prepare(
                call.api.path, data, flight.decision, call.model, call.request.headers
            )
        self._watch(call, flight, deadline)
        if send is None:
            return await self._upstream.post(ep.url, call.api.path, data, headers)
        flight.note = send.explain
        return await send.post(self._upstream, ep.url, call.api.path, headers)

    def _watch(self, call: _Call, flight: _Flight, deadline: asyncio.Timeout) -> None:
        """Shows the attempt to the stall watchdog from the moment its request goes to the endpoint. Not
        before: a P/D prefill hop runs in the gateway first (queued behind other prompts on the prefill pool
        for as long as `prefill_timeout_s`), and the decode endpoint, which has not been sent anything yet,
        must not be judged stalled for that wait (nor made a suspect)."""
        stalls = self._res.stalls
        if stalls.stall_after_s <= 0:
            return
        decision = flight.decision
        tokens = decision.prompt_tokens or len(call.raw) // 4  # ~4 bytes a token without a count
        grace = stall_grace_s(tokens, call.body.get("stream") is True)
        loop = asyncio.get_running_loop()
        flight.watched = Watched(decision.endpoint.id, loop.time(), grace_s=grace, deadline=deadline)
        stalls.add(flight.watched)

    async def _relay(
        self,
        call: _Call,
        upstream: UpstreamResponse,
        flight: _Flight,
        deadline: asyncio.Timeout,
    ) -> None:
        """Copies status, content type and chunks; the deadline moves to `idle_stream_timeout_s` per chunk."""
        ep = flight.decision.endpoint
        try:
            first = await upstream.readany()
            if first and is_opening_only(first):  # commit point: the first content byte, not the role event
                first += await upstream.readany()
        except EngineLinkError as err:
            msg = "the engine closed the connection before answering"
            raise _Failed(FailureKind.BROKEN, ErrorClass.RETRYABLE, 502, msg, "upstream_broken") from err
        guard = _event_guard(call, upstream)
        if guard is not None:
            first = guard.feed(first)
            if guard.error is not None and not guard.error.terminal and (not first or is_opening_only(first)):
                raise _engine_error(ep, guard.error, mid_stream=False)  # before any content: retried unseen
        self._first_token(flight)
        self._observe.first_token()
        if flight.breaker is not None:
            flight.breaker.answered()
        watched = flight.watched
        loop = asyncio.get_running_loop()
        if watched is not None:
            watched.last_byte = loop.time()
        now = time.perf_counter()
        content_type = upstream.headers.get("content-type", "application/json")
        size = upstream.content_length
        sse = content_type.startswith("text/event-stream")
        sniff = self._pins.sniffer(call.api.path, call.body, upstream.status, ep, sse)
        if not call.committed:
            self._metrics.observe_ttft(call.api.path, call.model, now - call.started, ep.pool)
            call.endpoint, call.pool, call.status = ep, ep.pool, str(upstream.status)
        if not call.committed and size is not None and size <= WHOLE_BODY_BYTES and not sse:
            # A complete JSON answer: one write of headers and body (no chunked framing, fewer syscalls).
            body = first if len(first) >= size else first + await upstream.read()
            if sniff is not None:
                sniff.feed(body)
                sniff.finish()
            generated = completion_tokens(body) or 0
            self._metrics.observe_generated(call.model, generated)
            self._observe.generated(generated)
            headers = {"Content-Type": content_type, **self._headers(ep.pool, flight.decision, flight.note)}
            call.response = web.Response(status=upstream.status, body=body, headers=headers)
            return
        continuing = call.committed
        if continuing:
            response = call.response
            assert response is not None
            cut: ContinuationFilter | None = ContinuationFilter()
        else:
            response = web.StreamResponse(
                status=upstream.status, headers=self._headers(ep.pool, flight.decision, flight.note)
            )
            response.content_type = content_type.split(";")[0]
            call.response = response
            await response.prepare(call.request)
            call.committed = True
            cut = None
            if (
                sse
                and call.plan.continue_streams
                and call.api.path in _CONTINUABLE
                and upstream.status == 200
            ):
                call.sent = SentText()
        flight.wrote = True
        if continuing:
            self._metrics.observe_stream_break(call.model, call.pool, "continued")
        sent = call.sent
        idle = self._config.idle_stream_timeout_s
        chunk = first
        counted = StreamTokens()
        counted.feed(chunk)
        try:
            while True:
                if cut is not None and chunk:
                    chunk = cut.feed(chunk)
                if chunk:
                    if sent is not None:
                        sent.feed(chunk)
                    if sniff is not None:
                        sniff.feed(chunk)
                    await response.write(chunk)
                t = loop.time()
                deadline.reschedule(t + idle)
                if watched is not None:
                    watched.last_byte = t  # progress, for the stall watchdog
                if guard is not None and guard.error is not None:
                    break
                raw = await upstream.readany()
                if not raw:
                    break
                counted.feed(raw)
                chunk = guard.feed(raw) if guard is not None else raw
            if guard is not None:
                await self._guard_end(guard, response, ep)
        except UpstreamBrokenError as err:
            log.warning("endpoint %s broke the stream: %s", ep.id, err)
            msg = "the engine closed the stream early"
            raise _Failed(
                FailureKind.BROKEN, ErrorClass.RETRYABLE, 502, msg, "upstream_broken", mid_stream=True
            ) from err
        finally:
            generated = counted.tokens()
            self._metrics.observe_generated(call.model, generated)
            self._observe.generated(generated)
        if sniff is not None:
            sniff.finish()
        await response.write_eof()
        self._res.cascade.observe_decode(ep.id, time.perf_counter() - now)  # for shedding's queue estimate

    async def _guard_end(self, guard: EventGuard, response: web.StreamResponse, ep: EndpointState) -> None:
        """The end of a guarded stream: the rest of it, a 4xx error event as the engine wrote it (without
        its `[DONE]`), or a break for a 5xx one (stream.py)."""
        error = guard.error
        if error is None:
            rest = guard.flush()
            if rest:
                await response.write(rest)
        elif error.terminal:
            await response.write(error.event)
        else:
            log.warning("endpoint %s ended its stream with an error event: %s", ep.id, error.message)
            raise _engine_error(ep, error, mid_stream=True)

    # --- a managed API (Bedrock) -------------------------------------------------------------------------
    async def _try_managed(self, call: _Call, tier: Tier, last: bool) -> web.StreamResponse | None:
        res = self._res
        assert tier.pool is not None
        client = res.managed_client(tier.pool) if res.managed_serves(tier.pool, call.model) else None
        if client is None:
            return self._skip(call, tier, SkipReason.NO_ENDPOINT)
        breaker = res.breaker(tier.pool)
        trial = breaker.allow()
        if not trial and not last:
            return self._skip(call, tier, SkipReason.CIRCUIT_OPEN)
        in_tier = 0
        try:
            while in_tier < self._retries.attempts_per_pool and call.attempts < self._retries.max_attempts:
                retry = in_tier > 0
                if retry:
                    if not res.budget.try_acquire():
                        return self._skip(call, tier, SkipReason.BUDGET)
                    self._metrics.observe_retry(call.model)
                try:
                    if retry:
                        await self._backoff(in_tier)
                    call.attempts += 1
                    in_tier += 1
                    self._observe.managed(call.model, tier.name)
                    try:
                        self._observe.attempt()
                        call.attempt_started = time.perf_counter()
                        response = await self._forward_managed(call, client, tier)
                        breaker.record_success()
                        return response
                    except _Failed as failed:
                        self._observe.attempt_failed(failed.kind)
                        breaker.record_failure(tier.name, 1)
                        self._metrics.observe_attempt_failure(call.model, tier.name, failed.kind)
                        if call.committed:
                            if failed.mid_stream or failed.cls is not ErrorClass.RETRYABLE:
                                return await self._end_stream(call, failed)
                        else:
                            call.failure = failed
                        if failed.cls is ErrorClass.TERMINAL:
                            return await self._give_up(call)
                        if failed.cls is ErrorClass.FALLBACK:
                            return self._skip(call, tier, SkipReason.FAILED)
                        if not last and breaker.state is not BreakerState.CLOSED:
                            return self._skip(call, tier, SkipReason.CIRCUIT_OPEN)
                finally:
                    if retry:
                        res.budget.release()
            return self._skip(call, tier, SkipReason.EXHAUSTED)
        finally:
            if in_tier == 0:
                breaker.abandon_trial()

    def _managed_body(self, call: _Call) -> dict[str, Any]:
        if call.committed and call.sent is not None:
            chat = call.api.path.endswith("/chat/completions")
            body = continuation_body(call.body, chat, call.sent, engine_options=False)
            if body is not None:
                return body
        return call.body

    async def _forward_managed(self, call: _Call, client: ManagedClient, tier: Tier) -> web.StreamResponse:
        """One attempt on a managed API: its OpenAI answer as JSON, or its chunks as SSE events."""
        if call.api.path != "/v1/chat/completions":
            msg = f"pool {tier.name} serves only /v1/chat/completions"
            raise _Failed(FailureKind.STATUS, ErrorClass.FALLBACK, 404, msg, "unsupported_route")
        body = self._managed_body(call)
        try:
            if not body.get("stream"):
                async with asyncio.timeout(self._config.first_token_timeout_s):
                    answer = await client.complete(body, call.model)
                self._metrics.observe_ttft(
                    call.api.path, call.model, time.perf_counter() - call.started, tier.name
                )
                self._res.cascade.observe_tier_ttft(tier.name, time.perf_counter() - call.attempt_started)
                self._observe.first_token()
                call.endpoint, call.pool, call.status = None, tier.name, "200"
                encoded = msgspec.json.encode(answer)
                generated = completion_tokens(encoded) or 0
                self._metrics.observe_generated(call.model, generated)
                self._observe.generated(generated)
                headers = {"Content-Type": "application/json", **self._headers(tier.name, None)}
                call.response = web.Response(status=200, body=encoded, headers=headers)
                return call.response
            return await self._stream_managed(call, client.stream(body, call.model), tier)
        except RequestRefused as err:
            raise _Failed(
                FailureKind.STATUS, ErrorClass.TERMINAL, err.status, str(err), err.code or "invalid_request"
            ) from None
        except EksinferError as err:
            status = int(getattr(err, "status", 502))
            code = str(getattr(err, "code", None) or "upstream_error")
            if getattr(err, "retryable", False):
                cls = ErrorClass.RETRYABLE
            else:
                cls = classify_status(status) or ErrorClass.FALLBACK
            raise _Failed(
                FailureKind.STATUS, cls, status, str(err), code, mid_stream=call.committed
            ) from None
        except TimeoutError:
            msg = f"pool {tier.name} did not answer within {self._config.first_token_timeout_s:g} s"
            raise _Failed(FailureKind.TIMEOUT, ErrorClass.RETRYABLE, 504, msg, "upstream_timeout") from None

    async def _stream_managed(
        self, call: _Call, chunks: AsyncIterator[dict[str, Any]], tier: Tier
    ) -> web.StreamResponse:
        """Relays a managed API's chunks as SSE. The opening role chunk is held back until content arrives
        (the commit point), or dropped when this attempt continues a stream the client already has."""
        loop = asyncio.get_running_loop()
        idle = self._config.idle_stream_timeout_s
        continuing = call.committed
        wrote = False
        held = b""
        try:
            async with asyncio.timeout(self._config.first_token_timeout_s) as deadline:
                async for chunk in chunks:
                    event = sse_event(without_role(chunk) if continuing and not wrote else chunk)
                    if not wrote and _opening_chunk(chunk):
                        if not continuing:
                            held = event
                        continue
                    if not wrote:
                        await self._commit_managed(call, tier)
                        wrote = True
                        if continuing:
                            self._metrics.observe_stream_break(call.model, call.pool, "continued")
                    data = held + event if held else event
                    held = b""
                    if call.sent is not None:
                        call.sent.feed(data)
                    assert call.response is not None
                    await call.response.write(data)
                    deadline.reschedule(loop.time() + idle)
                await self._commit_managed(call, tier)
                assert call.response is not None
                await call.response.write(held + SSE_DONE)
                await call.response.write_eof()
        except TimeoutError:
            msg = f"pool {tier.name} stopped sending"
            raise _Failed(
                FailureKind.TIMEOUT, ErrorClass.RETRYABLE, 504, msg, "upstream_timeout", mid_stream=wrote
            ) from None
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
        return call.response

    async def _commit_managed(self, call: _Call, tier: Tier) -> None:
        if call.committed:
            return
        self._metrics.observe_ttft(call.api.path, call.model, time.perf_counter() - call.started, tier.name)
        self._res.cascade.observe_tier_ttft(tier.name, time.perf_counter() - call.attempt_started)
        self._res.breaker(tier.name).answered()
        self._observe.first_token()
        response = web.StreamResponse(status=200, headers=self._headers(tier.name, None))
        response.content_type = "text/event-stream"
        call.response, call.committed = response, True
        call.endpoint, call.pool, call.status = None, tier.name, "200"
        await response.prepare(call.request)
        if call.plan.continue_streams:
            call.sent = SentText()


def _event_guard(call: _Call, upstream: UpstreamResponse) -> EventGuard | None:
    """A guard for vLLM's in-band error event on chat and completion streams (stream.py)."""
    if upstream.status != 200 or call.api.path not in _CONTINUABLE:
        return None
    return EventGuard() if upstream.headers.get("content-type", "").startswith("text/event-stream") else None


def _engine_error(ep: EndpointState, error: EngineError, *, mid_stream: bool) -> _Failed:
    msg = f"endpoint {ep.id} ended its stream with an error: {error.message}"
    return _Failed(
        FailureKind.ERROR_EVENT,
        ErrorClass.RETRYABLE,
        error.status,
        msg,
        "upstream_error",
        body=error.event if mid_stream else error.payload,  # after the commit point an event, else JSON
        content_type=_SSE_EVENT if mid_stream else "application/json",
        mid_stream=mid_stream,
    )


def _excluding(tried: set[str]) -> Callable[[EndpointState], bool]:
    return lambda state: state.id in tried


def _opening_chunk(chunk: Mapping[str, Any]) -> bool:
    choices = chunk.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return False
    delta = choices[0].get("delta")
    return (
        isinstance(delta, dict)
        and bool(delta.get("role"))
        and not delta.get("content")
        and not delta.get("tool_calls")
    )


async def _close_stream(
    response: web.StreamResponse, status: int, message: str, code: str, event: bytes | None = None
) -> None:
    """Ends a response whose status line is already sent: an error event for SSE (`event`, the engine's own,
    when it sent one), then end of body."""
    if response.content_type == "text/event-stream":
        await response.write(event or sse_error_event(status, message, code))
    await response.write_eof()
