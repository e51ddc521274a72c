"""The vLLM OpenAI-server routes the gateway forwards, what each must carry, and how each is routed.

Generative routes (completions, chat, Responses) go through the configured routing profile: their prompt
decides which engine holds the KV blocks worth reusing. Pooling routes (embeddings, score, rerank) and the
tokenizer routes keep nothing in the KV cache between requests, so they use the `load` preset (queue
depth, in-flight tokens, KV usage) whatever the profile. Every route needs `model` (the gateway picks the
engines by it) and one of its `fields`; the body goes to the engine unchanged, on the same path.

Stored responses (`ResponsePins`): vLLM 0.32 keeps a stored response in the memory of the engine that
answered, so a follow-up naming it (`previous_response_id`), `GET /v1/responses/{id}` and
`POST /v1/responses/{id}/cancel` go to that engine: known from the answers relayed (gateway/response_ids.py),
or found by asking every engine (a GET of the id) when this gateway process has not seen it. A pinned
follow-up is tried on that engine only: no retry elsewhere, no fallback to another tier, since no other
engine (or managed API) holds its conversation (docs/gateway.md, "Stored responses").

The Responses API (vLLM `entrypoints/openai/responses`) renders `instructions` as a system message and
`input` (a string, or a list of message items) as the conversation, through the same chat template as
`/v1/chat/completions`; `as_chat` (shared with the simulator) gives the router that view, so prefix
matching sees that prompt.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec
from aiohttp import web

from eksinfer.gateway.http import ApiKeys, RequestRefused, error_body, error_response
from eksinfer.gateway.response_ids import LOOKUP_RESULTS, IdSniffer, PinMetrics, ResponseIds
from eksinfer.gateway.upstream import EngineLinkError
from eksinfer.guarded_http import BodyTimeoutError, read_body
from eksinfer.tokenize.responses import as_chat

if TYPE_CHECKING:
    from eksinfer.gateway.config import ServerConfig
    from eksinfer.gateway.endpoints import EndpointRegistry, EndpointSpec
    from eksinfer.gateway.metrics import GatewayMetrics
    from eksinfer.gateway.scheduling.framework import EndpointState
    from eksinfer.gateway.upstream import UpstreamPool

__all__ = [
    "APIS",
    "LOAD_PROFILE",
    "LORA_PATHS",
    "Api",
    "LoraAdmin",
    "LoraAnswer",
    "ResponsePins",
    "as_chat",
    "broadcast_lora",
]

log = logging.getLogger(__name__)

LOAD_PROFILE = "load"


@dataclass(frozen=True, slots=True)
class Api:
    """One forwarded route: the body fields it needs (any one of them) and its routing profile."""

    path: str
    fields: tuple[str, ...]
    profile: str | None = None  # None: the configured profile
    chat_like: bool = False  # Responses: route on `as_chat(body)`


APIS: tuple[Api, ...] = (
    Api("/v1/completions", ("prompt",)),
    Api("/v1/chat/completions", ("messages",)),
    Api("/v1/responses", ("input",), chat_like=True),
    Api("/v1/embeddings", ("input", "messages"), LOAD_PROFILE),
    Api("/score", ("text_1", "queries", "data_1"), LOAD_PROFILE),
    Api("/v1/score", ("text_1", "queries", "data_1"), LOAD_PROFILE),
    Api("/v1/rerank", ("query",), LOAD_PROFILE),
    Api("/rerank", ("query",), LOAD_PROFILE),
    Api("/v2/rerank", ("query",), LOAD_PROFILE),
    Api("/tokenize", ("prompt", "messages"), LOAD_PROFILE),
    Api("/detokenize", ("tokens",), LOAD_PROFILE),
)

# vLLM's runtime LoRA routes (engines started with VLLM_ALLOW_RUNTIME_LORA_UPDATING). An adapter lives in one
# engine, so the gateway sends the call to every healthy engine (of the base `model` when the body names one:
# an extra field vLLM ignores) and answers 200 only when all of them loaded / unloaded it.
LORA_PATHS = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")


@dataclass(frozen=True, slots=True)
class LoraAnswer:
    """What the gateway answers: the engines' common 200 text, or the first refusal (status and body as the
    engine sent them); `done` lists the endpoints that accepted."""

    status: int
    body: bytes
    content_type: str | None
    done: tuple[EndpointState, ...]


async def broadcast_lora(
    upstream: UpstreamPool,
    endpoints: Sequence[EndpointState],
    path: str,
    raw: bytes,
    headers: Mapping[str, str],
) -> LoraAnswer:
    """Posts a load / unload call to every endpoint at once; see `LoraAnswer`."""

    async def one(ep: EndpointState) -> tuple[EndpointState, int, bytes, str | None]:
        try:
            resp = await upstream.post(ep.url, path, raw, headers)
        except Exception as err:  # an engine that cannot be reached: a 502 for it, the others go on
            return ep, 502, _error(502, f"endpoint {ep.id} could not be reached: {err}"), "application/json"
        try:
            return ep, resp.status, await resp.read(), resp.headers.get("content-type")
        finally:
            resp.close()

    answers = await asyncio.gather(*(one(ep) for ep in endpoints))
    done = tuple(ep for ep, status, _, _ in answers if status == 200)
    failed = [a for a in answers if a[1] != 200]
    _, status, body, ctype = failed[0] if failed else answers[0]
    return LoraAnswer(status, body, ctype, done)


class LoraAdmin:
    """The gateway's `/v1/load_lora_adapter` and `/v1/unload_lora_adapter` (`server.lora_adapter_routes`)."""

    def __init__(
        self,
        config: ServerConfig,
        registry: EndpointRegistry,
        upstream: UpstreamPool,
        keys: ApiKeys,
        metrics: GatewayMetrics,
    ) -> None:
        self._config, self._registry, self._upstream = config, registry, upstream
        self._keys, self._metrics = keys, metrics

    def routes(self) -> list[web.RouteDef]:
        return [web.post(path, functools.partial(self.handle, path=path)) for path in LORA_PATHS]

    def _refuse(self, path: str, status: int, message: str, code: str) -> web.Response:
        self._metrics.observe_request(path, "", None, str(status), None)
        return error_response(status, message, code=code)

    async def handle(self, request: web.Request, *, path: str) -> web.Response:
        started = time.perf_counter()
        if not self._keys.check(request.headers):
            return self._refuse(path, 401, "invalid or missing API key", "invalid_api_key")
        try:
            raw = await read_body(request, self._config.body_timeout_s)
            body = msgspec.json.decode(raw)
        except (msgspec.DecodeError, BodyTimeoutError, web.HTTPRequestEntityTooLarge, RecursionError):
            return self._refuse(path, 400, "request body is not valid JSON", "invalid_json")
        name, model = lora_body(body) if isinstance(body, dict) else (None, None)
        healthy = [s for s in self._registry.all() if s.healthy]
        targets = self._registry.candidates(model) if model else healthy
        if not targets:
            return self._refuse(path, 503, "no healthy endpoint to load the adapter on", "no_endpoint")
        headers = {"Content-Type": "application/json"}
        headers |= {h: request.headers[h] for h in _FORWARD if h in request.headers}
        answer = await broadcast_lora(self._upstream, targets, path, raw, headers)
        for state in answer.done if name else ():
            self._registry.adapter_changed(state, name or "", loaded=path == LORA_PATHS[0])
        self._metrics.observe_request(path, "", None, str(answer.status), time.perf_counter() - started)
        reply = {"Content-Type": answer.content_type} if answer.content_type else None
        return web.Response(status=answer.status, body=answer.body, headers=reply)


_FORWARD = ("x-request-id", "traceparent", "tracestate")  # as the proxy forwards them


def lora_body(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """The adapter name and the optional base model named in a load / unload body."""
    name, model = body.get("lora_name"), body.get("model")
    return (name if isinstance(name, str) else None), (model if isinstance(model, str) else None)


def _error(status: int, message: str) -> bytes:
    return error_body(status, message, code="upstream_failed")


RESPONSES = "/v1/responses"
BY_ID_ROUTE = "/v1/responses/{id}"  # the metrics label of GET and cancel (never the id itself)
PROBE_TIMEOUT_S = 5.0  # a GET of a stored response is a dictionary read in the engine


class ResponsePins:
    """Sends what names a stored response to the engine that holds it (module docstring). Listens to the
    registry: an endpoint that leaves the pool turns its ids into tombstones."""

    def __init__(
        self,
        config: ServerConfig,
        registry: EndpointRegistry,
        upstream: UpstreamPool,
        keys: ApiKeys,
        metrics: GatewayMetrics,
        ids: ResponseIds | None = None,
    ) -> None:
        self._config, self._registry, self._upstream = config, registry, upstream
        self._keys, self._metrics = keys, metrics
        self.ids = ids or ResponseIds(config.response_ids_max_entries, config.response_ids_ttl_s)
        lookups = PinMetrics(self.ids, metrics.registry).lookups
        self._lookups = {
            result: lookups.labels(result) for result in LOOKUP_RESULTS
        }  # children, looked up once
        registry.subscribe(self)

    # --- endpoint listener ----------------------------------------------------------------------------
    def endpoint_added(self, state: EndpointState, spec: EndpointSpec) -> None:
        return None

    def endpoint_removed(self, state: EndpointState) -> None:
        if self.ids.endpoint_left(state.id):
            log.info("endpoint %s left: its stored responses are lost", state.id)

    # --- the request path ----------------------------------------------------------------------------
    def sniffer(
        self, path: str, body: Mapping[str, Any], status: int, ep: EndpointState, sse: bool
    ) -> IdSniffer | None:
        """What reads a relayed answer's id, for a 200 answer of `POST /v1/responses` that may be stored."""
        if path != RESPONSES or status != 200 or body.get("store") is False:
            return None
        self.ids.expire()  # amortised: the oldest ids only
        return IdSniffer(sse, lambda response_id: self.ids.learn(response_id, ep.id, ep.pool))

    async def pin(self, path: str, body: Mapping[str, Any], model: str) -> EndpointState | None:
        """The engine a follow-up (`previous_response_id`) must go to; None: route as usual (no follow-up,
        or no engine holds the id, which the chosen engine then answers with vLLM's own 404). Raises
        `RequestRefused` when the engine is gone or may be among those that did not answer."""
        previous = body.get("previous_response_id") if path == RESPONSES else None
        if not isinstance(previous, str) or not previous:
            return None
        found, _ = await self.find(previous, model, "previous_response_id")
        return found

    def unavailable(self, pin: EndpointState, body: Mapping[str, Any]) -> web.Response:
        """A pinned follow-up whose engine could not take it (unreachable, timed out)."""
        self._lookups["unavailable"].inc()
        rid = body.get("previous_response_id")
        msg = (
            f"response '{rid}' is stored on one engine of pool '{pin.pool}', which could not take the "
            "request; its conversation lives only there, so the gateway sends it nowhere else: retry "
            "later, or send the conversation as `input` without `previous_response_id`"
        )
        return error_response(503, msg, code="response_engine_unavailable", param="previous_response_id")

    async def find(
        self, response_id: str, model: str | None, param: str
    ) -> tuple[EndpointState | None, bytes | None]:
        """The endpoint holding `response_id`: remembered, else asked of every healthy endpoint (of `model`
        when given). None with an engine's 404 body when no engine has it."""
        entry = self.ids.lookup(response_id)
        if entry is not None and entry.gone:
            self._lookups["gone"].inc()
            msg = (
                f"response '{response_id}' was stored on an engine of pool '{entry.pool}' that has left the "
                "pool; vLLM keeps stored responses in the engine's memory, so it is lost: send the "
                "conversation as `input` without `previous_response_id`"
            )
            raise RequestRefused(404, msg, "response_engine_gone", param=param)
        state = self._registry.get(entry.endpoint) if entry is not None else None
        if state is not None:
            self._lookups["hit"].inc()
            return state, None
        targets = [s for s in self._registry.all() if s.healthy and (model is None or model in s.models)]
        answers = await asyncio.gather(*(self._probe(ep, response_id) for ep in targets))
        for ep, status, _ in answers:
            if status == 200:
                self._lookups["probe_hit"].inc()
                self.ids.learn(response_id, ep.id, ep.pool)
                return ep, None
        silent = sum(1 for _, status, _ in answers if status != 404)
        if silent:
            self._lookups["unavailable"].inc()
            msg = (
                f"response '{response_id}' was not found on the engines that answered, and {silent} of "
                f"{len(targets)} did not answer (it may be stored on one of them); retry later"
            )
            raise RequestRefused(503, msg, "response_engine_unavailable", param=param)
        self._lookups["not_found"].inc()
        return None, next((body for _, _, body in answers), None)

    async def _probe(self, ep: EndpointState, response_id: str) -> tuple[EndpointState, int, bytes]:
        """GET of the id on one engine: its status (0 when it did not answer) and body."""
        path = f"{RESPONSES}/{quote(response_id, safe='')}"
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                resp = await self._upstream.request("GET", ep.url, path, b"", {})
                try:
                    return ep, resp.status, await resp.read()
                finally:
                    resp.close()
        except Exception as err:  # unreachable or too slow: counted as "did not answer"
            log.debug("probe of %s on %s failed: %s", response_id, ep.id, err)
            return ep, 0, b""

    # --- GET /v1/responses/{id} and POST /v1/responses/{id}/cancel -----------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(RESPONSES + "/{response_id}", functools.partial(self.by_id, method="GET", suffix="")),
            web.post(
                RESPONSES + "/{response_id}/cancel",
                functools.partial(self.by_id, method="POST", suffix="/cancel"),
            ),
        ]

    async def by_id(self, request: web.Request, *, method: str, suffix: str) -> web.StreamResponse:
        """Forwards the call to the engine holding the response, and its answer back as it comes (a GET
        with `stream=true` replays a background response's events)."""
        started = time.perf_counter()
        if not self._keys.check(request.headers):
            return self._answer(401, "invalid or missing API key", "invalid_api_key")
        response_id = request.match_info["response_id"]
        try:
            state, missing = await self.find(response_id, None, "response_id")
        except RequestRefused as err:
            return self._answer(err.status, str(err), err.code, err.param)
        if state is None:
            if missing is None:
                return self._answer(503, "no healthy endpoint to ask for the response", "no_endpoint")
            self._metrics.observe_request(BY_ID_ROUTE, "", None, "404", time.perf_counter() - started)
            return web.Response(status=404, body=missing, content_type="application/json")
        path = f"{RESPONSES}/{quote(response_id, safe='')}{suffix}"
        if request.query_string:
            path += "?" + request.query_string
        headers = {h: request.headers[h] for h in _FORWARD if h in request.headers}
        if method == "POST":
            headers["Content-Type"] = "application/json"
        try:
            async with asyncio.timeout(self._config.first_token_timeout_s):
                upstream = await self._upstream.request(method, state.url, path, b"", headers)
        except Exception as err:
            log.warning("%s %s on %s failed: %s", method, BY_ID_ROUTE, state.id, err)
            msg = (
                f"response '{response_id}' is stored on one engine of pool '{state.pool}', which could not "
                "be reached; retry later"
            )
            return self._answer(503, msg, "response_engine_unavailable", "response_id")
        reply: web.StreamResponse | None = None
        try:
            ctype = upstream.headers.get("content-type", "application/json")
            if not ctype.startswith("text/event-stream"):
                body = await asyncio.wait_for(upstream.read(), self._config.idle_stream_timeout_s)
                reply = web.Response(status=upstream.status, body=body, headers={"Content-Type": ctype})
            else:
                reply = web.StreamResponse(status=upstream.status, headers={"Content-Type": ctype})
                await reply.prepare(request)
                idle = self._config.idle_stream_timeout_s
                while chunk := await asyncio.wait_for(upstream.readany(), idle):
                    await reply.write(chunk)
                await reply.write_eof()
        except (EngineLinkError, ConnectionError, TimeoutError) as err:
            log.warning("%s %s on %s broke: %s", method, BY_ID_ROUTE, state.id, err)
            if reply is not None and reply.prepared:
                return reply  # a stream ends where it broke
            return self._answer(502, "the engine closed the connection early", "upstream_broken")
        finally:
            upstream.close()
        status = str(upstream.status)
        self._metrics.observe_request(BY_ID_ROUTE, "", state, status, time.perf_counter() - started)
        return reply

    def _answer(self, status: int, message: str, code: str | None, param: str | None = None) -> web.Response:
        self._metrics.observe_request(BY_ID_ROUTE, "", None, str(status), None)
        return error_response(status, message, code=code, param=param)
