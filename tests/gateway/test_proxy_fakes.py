"""Fakes for the gateway tests: a small vLLM-shaped engine (aiohttp on 127.0.0.1) and a round-robin router.

The fake engine stands in for vLLM because no GPU runs here; it speaks the same routes and formats
(vllm-samples/completions_stream.sse, metrics names) and records what it saw, including client disconnects.
The round-robin router stands in for `eksinfer.gateway.routing.Router` so the proxy is tested on its own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from eksinfer.gateway.scheduling.framework import Decision, EndpointId, EndpointState, ScoredEndpoint
from tests.local_http import FakeEngineServer
from tests.waiting import until as until  # re-exported: older tests import it from here


@dataclass
class EngineBehaviour:
    tokens: int = 4
    first_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    hang: bool = False  # never answer
    hold: asyncio.Event | None = None  # answer only once the test sets it (a request held in flight)
    step: asyncio.Event | None = None  # after each streamed chunk but the last, wait for the test to set it
    break_after: int | None = None  # close the connection after this many chunks
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    fail_status: int | None = None  # answer generation requests with this status (a vLLM-shaped error)
    fail_first: int | None = None  # only the first N requests fail (None: all, while fail_status is set)
    role_event: bool = False  # chat streams open with vLLM's role event before the first token
    health_status: int = 200  # what GET /health answers
    error_after: int | None = None  # after this many tokens, end with vLLM's in-band error event + [DONE]
    error_code: int = 500  # that event's code (vLLM: 500 for an engine failure, 400 for a refused request)
    error_split: bool = False  # write the error event in two pieces (a read may split it)


@dataclass
class FakeEngine(FakeEngineServer):
    model: str = "tiny"
    behaviour: EngineBehaviour = field(default_factory=EngineBehaviour)
    requests: int = 0
    cancelled: int = 0
    held: int = 0  # requests that reached `behaviour.hold`
    completed: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[Mapping[str, str]] = field(default_factory=list)
    peers: list[int] = field(default_factory=list)  # client port of each request: keep-alive reuses one
    health_checks: int = 0
    runner: web.AppRunner | None = None
    url: str = ""

    async def _health(self, request: web.Request) -> web.Response:
        self.health_checks += 1
        return web.Response(status=self.behaviour.health_status)

    async def _metrics(self, request: web.Request) -> web.Response:
        b = self.behaviour
        text = (
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{engine="0",model_name="{self.model}"}} {b.running}.0\n'
            f'vllm:num_requests_waiting{{engine="0",model_name="{self.model}"}} {b.waiting}.0\n'
            f'vllm:kv_cache_usage_perc{{engine="0",model_name="{self.model}"}} {b.kv_usage}\n'
            f'vllm:cache_config_info{{block_size="16",engine="0",num_gpu_blocks="1024"}} 1.0\n'
        )
        return web.Response(text=text, content_type="text/plain")

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.json()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peers.append(peer[1] if peer else -1)
        try:
            return await self._answer(request, body)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def _answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        b = self.behaviour
        if b.hang:
            await asyncio.sleep(3600)
        if body.get("model") != self.model:
            err = {
                "error": {"message": "no such model", "type": "NotFoundError", "param": "model", "code": 404}
            }
            return web.json_response(err, status=404)
        if b.fail_status is not None and (b.fail_first is None or self.requests <= b.fail_first):
            err = {
                "error": {"message": "injected", "type": "InternalServerError", "param": None, "code": 500}
            }
            return web.json_response(err, status=b.fail_status)
        await asyncio.sleep(b.first_delay_s)
        if b.hold is not None:
            self.held += 1
            await b.hold.wait()
        chat = request.path.endswith("/chat/completions")
        words = [f" w{i}" for i in range(b.tokens)]
        if not body.get("stream"):
            self.completed += 1
            text = "".join(words)
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": text}} if chat else {"text": text}
            )
            usage = {"prompt_tokens": 5, "completion_tokens": b.tokens, "total_tokens": 5 + b.tokens}
            return web.json_response(
                {"id": "x", "object": "completion", "model": self.model, "choices": [choice], "usage": usage}
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if chat and b.role_event:
            opening = {"id": "x", "object": "chunk", "created": int(time.time()), "model": self.model}
            opening["choices"] = [{"index": 0, "delta": {"role": "assistant", "content": ""}}]
            await resp.write(b"data: " + json.dumps(opening, separators=(",", ":")).encode() + b"\n\n")
        for i, word in enumerate(words):
            if b.error_after is not None and i >= b.error_after:
                await self._error_event(resp, b)
                return resp
            if b.break_after is not None and i >= b.break_after:
                assert request.transport is not None
                request.transport.close()
                return resp
            delta = {"delta": {"content": word}} if chat else {"text": word}
            chunk = {"id": "x", "object": "chunk", "created": int(time.time()), "model": self.model}
            chunk["choices"] = [{"index": 0, **delta, "finish_reason": None}]
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(b.chunk_delay_s)
            if b.step is not None and i < len(words) - 1:
                await b.step.wait()
                b.step.clear()
        await resp.write(b"data: [DONE]\n\n")
        self.completed += 1
        await resp.write_eof()
        return resp

    @staticmethod
    async def _error_event(resp: web.StreamResponse, b: EngineBehaviour) -> None:
        """vLLM's in-band error (`create_streaming_error_response`: `json.dumps`, so with spaces), then its
        `[DONE]`."""
        kind = "InternalServerError" if b.error_code >= 500 else "BadRequestError"
        error = {"message": "engine failed", "type": kind, "param": None, "code": b.error_code}
        event = f"data: {json.dumps({'error': error})}\n\n".encode()
        if b.error_split:
            await resp.write(event[:12])
            await asyncio.sleep(0.05)  # a separate read on the gateway's side (its verdict holds either way)
            await resp.write(event[12:])
        else:
            await resp.write(event)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()


class RoundRobinRouter:
    """Test stand-in for the real router: cycles over the candidates, records the hooks it received."""

    preset = "round-robin"

    def __init__(self) -> None:
        self._counter = itertools.count()
        self.added: list[tuple[str, str | None]] = []
        self.removed: list[str] = []
        self.profiles: list[str | None] = []
        self.first_tokens = 0
        self.finished: list[bool] = []
        self.started = False
        self.stopped = False

    def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def endpoint_added(self, state: EndpointState, kv_events: str | None) -> None:
        self.added.append((state.id, kv_events))

    def endpoint_removed(self, endpoint_id: EndpointId) -> None:
        self.removed.append(endpoint_id)

    async def route(
        self,
        model: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        endpoints: Sequence[EndpointState],
        *,
        profile: str | None = None,
    ) -> Decision:
        self.profiles.append(profile)
        chosen = endpoints[next(self._counter) % len(endpoints)]
        chosen.inflight_requests += (
            1  # the real router's accounting: +1 request, +prompt tokens until 1st token
        )
        chosen.inflight_prompt_tokens += 10
        scored = tuple(ScoredEndpoint(e, 1.0 if e is chosen else 0.0, {"rr": 1.0}) for e in endpoints)
        return Decision(endpoint=chosen, reason="round-robin", candidates=scored)

    def on_first_token(self, decision: Decision) -> None:
        self.first_tokens += 1
        decision.endpoint.inflight_prompt_tokens -= 10

    def on_finish(self, decision: Decision, ok: bool) -> None:
        self.finished.append(ok)
        if len(self.finished) > self.first_tokens:  # ended before its first token: release the tokens too
            self.first_tokens += 1
            decision.endpoint.inflight_prompt_tokens -= 10
        decision.endpoint.inflight_requests -= 1

    def stats(self) -> dict[str, Any]:
        return {"index_blocks": 7, "preset": "round-robin", "subscribers": {"e1": {"lag_s": 0.5, "gaps": 2}}}
