"""A small engine that answers like vLLM with `--kv-transfer-config '{"kv_connector":"NixlConnector",...}'`.

A stand-in because no GPU (and no NIXL) runs here, used until the simulator speaks the protocol. It follows
vLLM's field names exactly (vLLM `distributed/kv_transfer/kv_connector/v1/nixl_connector.py`,
`NixlConnectorScheduler.request_finished` and `get_num_new_matched_tokens`):
- a request whose `kv_transfer_params.do_remote_decode` is true is a prefill: it ends after one token with
  finish_reason "length" and answers `kv_transfer_params = {do_remote_prefill: true, do_remote_decode: false,
  remote_block_ids, remote_engine_id, remote_request_id, remote_host, remote_port, tp_size}`; its blocks stay
  pinned until a decode pulls them;
- a request whose `kv_transfer_params.do_remote_prefill` is true pulls those blocks (here: looks them up in
  the shared `NixlFabric`, standing for the NIXL side channel) and decodes; it reports every pulled token as
  cached, as vLLM's decode side does;
- any other request prefills locally and reports `prefix_cached` tokens cached.
Prompt tokens are counted as characters / 4, like the gateway's approximate tokenizer.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiohttp import web

from tests.local_http import FakeEngineServer

BLOCK_SIZE = 16


@dataclass
class NixlFabric:
    """The pinned prefills of every engine, keyed by (engine id, request id): what a decode may pull."""

    pinned: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    pulled: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class NixlFakeEngine(FakeEngineServer):
    max_model_len: ClassVar[int] = 32768
    fabric: NixlFabric
    engine_id: str
    model: str = "tiny"
    tokens: int = 3
    prefix_cached: int = 0  # prompt tokens reported cached on a prefill or a local prefill
    prefill_status: int = 200  # a prefill answered with this status (500: a failing prefiller)
    prefill_hold: asyncio.Event | None = None  # prefills wait for it (a hanging prefiller)
    prefill_without_params: bool = False  # the one token was end-of-sequence: nothing to pull
    decode_hold: asyncio.Event | None = None  # decodes and local requests wait for it before answering
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    prefills: int = 0
    remote_decodes: int = 0
    local_prefills: int = 0
    cancelled: int = 0
    url: str = ""
    runner: web.AppRunner | None = None
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def _metrics(self, request: web.Request) -> web.Response:
        text = (
            f'vllm:num_requests_running{{engine="0",model_name="{self.model}"}} 0.0\n'
            f'vllm:num_requests_waiting{{engine="0",model_name="{self.model}"}} 0.0\n'
            f'vllm:kv_cache_usage_perc{{engine="0",model_name="{self.model}"}} 0.0\n'
            f'vllm:cache_config_info{{block_size="{BLOCK_SIZE}",engine="0",num_gpu_blocks="4096"}} 1.0\n'
        )
        return web.Response(text=text, content_type="text/plain")

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        try:
            return await self._answer(request, body)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def _answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        chat = request.path.endswith("/chat/completions")
        prompt = json.dumps(body["messages"]) if chat else str(body["prompt"])
        prompt_tokens = max(1, len(prompt) // 4)
        params = body.get("kv_transfer_params") or {}
        if params.get("do_remote_decode"):
            return await self._prefill(request, body, prompt_tokens, chat)
        if params.get("do_remote_prefill"):
            key = (params["remote_engine_id"], params["remote_request_id"])
            if key not in self.fabric.pinned:
                return _error(400, f"no pinned prefill {key}")
            del self.fabric.pinned[key]
            self.fabric.pulled.append(key)
            self.remote_decodes += 1
            cached = prompt_tokens  # vLLM's decode counts the pulled tokens as computed
        else:
            self.local_prefills += 1
            cached = self.prefix_cached
        if self.decode_hold is not None:
            await self.decode_hold.wait()
        usage = _usage(prompt_tokens, self.tokens, cached)
        words = [f" w{i}" for i in range(self.tokens)]
        if not body.get("stream"):
            return web.json_response(_completion(self.model, chat, "".join(words), "length", usage, None))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for word in words:
            delta = {"delta": {"content": word}} if chat else {"text": word}
            chunk = {"id": "x", "object": "chat.completion.chunk" if chat else "text_completion"}
            chunk |= {"created": 0, "model": self.model}
            chunk["choices"] = [{"index": 0, **delta, "finish_reason": None}]
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            last = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": self.model}
            last |= {"choices": [], "usage": usage}
            await resp.write(f"data: {json.dumps(last)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _prefill(
        self, request: web.Request, body: dict[str, Any], prompt_tokens: int, chat: bool
    ) -> web.Response:
        self.prefills += 1
        if self.prefill_hold is not None:
            await self.prefill_hold.wait()
        if self.prefill_status >= 400:
            return _error(self.prefill_status, "prefill failed")
        request_id = f"cmpl-{request.headers.get('x-request-id', 'none')}-{next(self._ids)}"
        params = None
        if not self.prefill_without_params:
            blocks = list(range(-(-prompt_tokens // BLOCK_SIZE)))
            self.fabric.pinned[(self.engine_id, request_id)] = blocks
            assert request.url.port is not None
            params = {
                "do_remote_prefill": True,
                "do_remote_decode": False,
                "remote_block_ids": blocks,
                "remote_engine_id": self.engine_id,
                "remote_request_id": request_id,
                "remote_host": "127.0.0.1",
                "remote_port": 5600,
                "tp_size": 1,
            }
        usage = _usage(prompt_tokens, 1, self.prefix_cached)
        return web.json_response(_completion(self.model, chat, " w0", "length", usage, params))


def _usage(prompt_tokens: int, completion_tokens: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached} if cached else None,
    }


def _completion(
    model: str, chat: bool, text: str, finish: str, usage: dict[str, Any], params: dict[str, Any] | None
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    choice |= {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
    return {
        "id": "cmpl-x",
        "object": "chat.completion" if chat else "text_completion",
        "created": 0,
        "model": model,
        "choices": [choice],
        "usage": usage,
        "kv_transfer_params": params,
    }


def _error(status: int, message: str) -> web.Response:
    err = {"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}}
    return web.json_response(err, status=status)
