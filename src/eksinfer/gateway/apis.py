"""The vLLM OpenAI-server routes the gateway forwards, what each must carry, and how each is routed.

Generative routes (completions, chat, Responses) go through the configured routing profile: their prompt
decides which engine holds the KV blocks worth reusing. Pooling routes (embeddings, score, rerank) and the
tokenizer routes keep nothing in the KV cache between requests, so they use the `load` preset (queue
depth, in-flight tokens, KV usage) whatever the profile. Every route needs `model` (the gateway picks the
engines by it) and one of its `fields`; the body goes to the engine unchanged, on the same path.

The Responses API (vLLM `entrypoints/openai/responses`) renders `instructions` as a system message and
`input` (a string, or a list of message items) as the conversation, through the same chat template as
`/v1/chat/completions`; `as_chat` (shared with the simulator) gives the router that view, so prefix
matching sees that prompt.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from eksinfer.gateway.http import ApiKeys, error_body, error_response
from eksinfer.guarded_http import BodyTimeoutError, read_body
from eksinfer.tokenize.responses import as_chat

if TYPE_CHECKING:
    from eksinfer.gateway.config import ServerConfig
    from eksinfer.gateway.endpoints import EndpointRegistry
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
    "as_chat",
    "broadcast_lora",
]

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
