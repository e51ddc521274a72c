"""The request pipeline: admit (auth, limits, parse) -> route (router over the model's candidates) -> forward
(stream the engine's bytes through as they arrive, never buffered).

Forwarding rules:
- the raw request body goes to the engine unchanged (no re-serialisation); the response is copied chunk by
  chunk, so an SSE stream reaches the client token by token;
- the engine is called through `upstream.UpstreamPool` (keep-alive connections, httptools parser), not
  aiohttp's client, which cost several times more CPU per request;
- timeouts: connect, first bytes from the engine, and silence between two chunks;
- a client that disconnects cancels the handler (aiohttp `handler_cancellation`), which closes the upstream
  connection, which makes vLLM abort the request and free its KV blocks;
- an endpoint that cannot be reached before any byte went to the client is marked unhealthy and the request is
  routed again among the others (at most `MAX_ATTEMPTS` endpoints); after the stream started, an error event
  ends it.
In-flight work per endpoint (requests, and uncached prompt tokens until the first token) is added by the
router when it decides and released through `on_first_token` / `on_finish`, which the proxy calls exactly once
each, on every path (success, engine error, timeout, client disconnect).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from aiohttp import web

from eksinfer.errors import EksinferError
from eksinfer.gateway.apis import APIS, Api, LoraAdmin, as_chat
from eksinfer.gateway.config import ServerConfig
from eksinfer.gateway.endpoints import EndpointRegistry
from eksinfer.gateway.http import ApiKeys, RequestRefused, error_for, error_response, sse_error_event
from eksinfer.gateway.metrics import GatewayMetrics
from eksinfer.gateway.observe import RequestObserver
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

MAX_ATTEMPTS = 3
OFF_LOOP_DECODE_BYTES = 1 << 20  # msgspec decodes ~1 GB/s: from 1 MiB (~1 ms) a body is decoded in a thread
WHOLE_BODY_BYTES = 1 << 20  # non-streamed answers up to 1 MiB with a Content-Length are sent in one write
_FORWARD_HEADERS = ("x-request-id", "traceparent", "tracestate")


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


@dataclass(slots=True)
class _Flight:
    """One attempt on one endpoint: what to release when it ends."""

    decision: Decision
    model: str
    started: float
    first_token: bool = False
    done: bool = False
    ok: bool = False
    broken: bool = False
    retried: bool = False
    response: web.StreamResponse | None = None


class _RetryElsewhere(Exception):
    """The endpoint failed before the client saw a byte; route again without it."""


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
        *,
        observer: RequestObserver | None = None,
    ) -> None:
        self._config = config
        self._observe = observer if observer is not None else RequestObserver.off()
        self._registry = registry
        self._router = router
        self._metrics = metrics
        self._upstream = upstream
        self._keys = keys
        self._preset = preset
        self._inflight = 0
        self._warn = RateLimitedLog(log)
        config_of_router = getattr(router, "config", None)
        self._debug_header: str | None = getattr(config_of_router, "debug_header", "x-eksinfer-route")
        self._route_headers = config.route_headers  # off by default: they expose pod addresses

    @property
    def inflight(self) -> int:
        return self._inflight

    def routes(self) -> list[web.RouteDef]:
        posts = [
            web.post(api.path, self._observe.wrap(functools.partial(self._handle, api=api))) for api in APIS
        ]
        if self._config.lora_adapter_routes:  # vLLM's runtime LoRA routes, sent to every engine
            posts += LoraAdmin(
                self._config, self._registry, self._upstream, self._keys, self._metrics
            ).routes()
        return [*posts, web.get("/v1/models", self.models)]

    async def models(self, request: web.Request) -> web.StreamResponse:
        if not self._keys.check(request.headers):
            return error_response(401, "invalid or missing API key", code="invalid_api_key")
        body = msgspec.json.encode({"object": "list", "data": self._registry.model_cards()})
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
            return await self._dispatch(request, api, raw, body, model, started)
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
        field = next((f for f in fields if body.get(f) is not None), fields[0])
        value = body.get(field)
        if value is None or (field == "messages" and (not isinstance(value, list) or not value)):
            kind = "a non-empty list" if field == "messages" else "present"
            either = " or ".join(f"'{f}'" for f in fields)
            msg = f"{either} is required" if value is None else f"'{field}' is required and must be {kind}"
            raise RequestRefused(400, msg, None, param=field)
        if not self._registry.known_model(model):
            msg = f"the model '{model}' does not exist"
            raise RequestRefused(404, msg, "model_not_found", param="model")
        return raw, body, model

    async def _dispatch(
        self, request: web.Request, api: Api, raw: bytes, body: dict[str, Any], model: str, started: float
    ) -> web.StreamResponse:
        tried: set[str] = set()
        path = api.path
        view = as_chat(body) if api.chat_like else body
        for _ in range(MAX_ATTEMPTS):
            candidates = self._registry.candidates(model, exclude=lambda s: s.id in tried)
            if not candidates:
                break
            routing_started = time.perf_counter()
            if api.profile is None:
                decision = await self._router.route(model, view, request.headers, candidates)
            else:
                decision = await self._router.route(
                    model, view, request.headers, candidates, profile=api.profile
                )
            self._metrics.observe_decision(
                model,
                decision.preset or self._preset,
                decision.reason,
                time.perf_counter() - routing_started,
                decision.prompt_tokens,
                decision.predicted_cached_tokens,
            )
            self._observe.decided(model, decision)
            try:
                return await self._forward(request, path, raw, decision, model, started)
            except _RetryElsewhere:
                tried.add(decision.endpoint.id)
                self._metrics.observe_retry(model)
        if tried:
            return self._finish_early(
                path, 502, "no endpoint could be reached for this request", "upstream_failed", model=model
            )
        msg = f"no healthy endpoint serves model '{model}'"
        return self._finish_early(path, 503, msg, "no_endpoint", model=model)

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

    def _begin(self, decision: Decision, model: str) -> _Flight:
        """In-flight requests and uncached prompt tokens were added by `router.route` (its ticket releases
        them exactly once); the proxy only makes sure both hooks are called at the right moments."""
        return _Flight(decision, model, time.perf_counter())

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

    def _explain(self, decision: Decision) -> dict[str, str]:
        if not self._route_headers:
            return {}
        headers: dict[str, str] = {"x-eksinfer-endpoint": decision.endpoint.id}
        if self._debug_header:
            headers[self._debug_header] = decision.explain()
        return headers

    async def _forward(
        self,
        request: web.Request,
        path: str,
        raw: bytes,
        decision: Decision,
        model: str,
        started: float,
    ) -> web.StreamResponse:
        """Sends the request to the chosen endpoint and copies the answer back as it arrives."""
        ep = decision.endpoint
        flight = self._begin(decision, model)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("route %s -> %s (%s) %s", path, ep.id, decision.reason, self._explain(decision))
        status = "000"
        try:
            async with asyncio.timeout(self._config.first_token_timeout_s) as deadline:
                try:
                    upstream = await self._upstream.post(ep.url, path, raw, self._upstream_headers(request))
                except UpstreamConnectError as err:
                    log.warning("endpoint %s unreachable: %s", ep.id, err)
                    ep.healthy = False
                    raise _RetryElsewhere from err
                try:
                    status = str(upstream.status)
                    await self._relay(request, upstream, flight, deadline)
                    if flight.response is not None and not flight.response.prepared:
                        status = str(flight.response.status)  # what the client gets (a 502 for a cut body)
                    flight.ok = upstream.status < 500 and not flight.broken
                finally:
                    upstream.close()
        except _RetryElsewhere:
            flight.retried = True
            raise
        except TimeoutError:
            status = "504"
            stage = "its first bytes" if flight.response is None else "its stream (idle)"
            self._warn.warning(f"504 {ep.id}", "endpoint %s timed out on %s: 504", ep.id, stage)
            if flight.response is None:
                msg = f"endpoint {ep.id} did not answer within {self._config.first_token_timeout_s:g} s"
                return error_response(504, msg, code="upstream_timeout")
            await _close_stream(flight.response, 504, "the engine stopped sending", "upstream_timeout")
        except ConnectionResetError:
            status = "499"  # the client went away while we wrote to it (nginx's code for it)
        except asyncio.CancelledError:
            status = "499"
            raise
        finally:
            self._end(flight, flight.ok)
            if not flight.retried:
                self._metrics.observe_request(path, model, ep, status, time.perf_counter() - started)
        assert flight.response is not None
        return flight.response

    async def _relay(
        self,
        request: web.Request,
        upstream: UpstreamResponse,
        flight: _Flight,
        deadline: asyncio.Timeout,
    ) -> None:
        """Copies status, content type and chunks; the deadline moves to `idle_stream_timeout_s` per chunk."""
        try:
            first = await upstream.readany()
        except EngineLinkError as err:
            flight.decision.endpoint.healthy = False
            raise _RetryElsewhere from err
        self._first_token(flight)
        self._observe.first_token()
        self._metrics.observe_ttft(request.path, flight.model, time.perf_counter() - flight.started)
        content_type = upstream.headers.get("content-type", "application/json")
        size = upstream.content_length
        if size is not None and size <= WHOLE_BODY_BYTES and not content_type.startswith("text/event-stream"):
            # A complete JSON answer: one write of headers and body (no chunked framing, fewer syscalls).
            try:
                body = first if len(first) >= size else first + await upstream.read()
            except EngineLinkError as err:
                self._warn.warning(
                    f"cut {flight.decision.endpoint.id}",
                    "endpoint %s closed the connection before the whole body: %s",
                    flight.decision.endpoint.id,
                    err,
                )
                flight.broken = True
                msg = "the engine closed the connection before the whole answer arrived"
                flight.response = error_response(502, msg, code="upstream_broken")
                return
            generated = completion_tokens(body) or 0
            self._metrics.observe_generated(flight.model, generated)
            self._observe.generated(generated)
            headers = {"Content-Type": content_type, **self._explain(flight.decision)}
            flight.response = web.Response(status=upstream.status, body=body, headers=headers)
            return
        response = web.StreamResponse(status=upstream.status, headers=self._explain(flight.decision))
        response.content_type = content_type.split(";")[0]
        flight.response = response
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        idle = self._config.idle_stream_timeout_s
        chunk = first
        counted = StreamTokens()
        try:
            while chunk:
                counted.feed(chunk)
                await response.write(chunk)
                deadline.reschedule(loop.time() + idle)
                chunk = await upstream.readany()
        except UpstreamBrokenError as err:
            log.warning("endpoint %s broke the stream: %s", flight.decision.endpoint.id, err)
            flight.broken = True
            await _close_stream(response, 502, "the engine closed the stream early", "upstream_broken")
            return
        finally:
            generated = counted.tokens()
            self._metrics.observe_generated(flight.model, generated)
            self._observe.generated(generated)
        await response.write_eof()


async def _close_stream(response: web.StreamResponse, status: int, message: str, code: str) -> None:
    """Ends a response whose status line is already sent: an error event for SSE, then end of body."""
    if response.content_type == "text/event-stream":
        await response.write(sse_error_event(status, message, code))
    await response.write_eof()
