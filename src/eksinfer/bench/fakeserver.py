"""A minimal OpenAI-compatible server with known timings, for tests and for measuring the client itself.

Every response streams exactly `max_tokens` tokens (one per SSE chunk, like vLLM with ignore_eos): the first
at `ttft_s` after the request arrived and token i at ttft_s + i * itl_s, scheduled on absolute times so sleep
overshoot does not accumulate. With ttft_s = itl_s = 0 it is an instant backend: whatever latency a client
then measures is the client's and the loopback's own cost.

It also serves GET /v1/models (one model; other names get vLLM's 404 body), and GET /metrics with the two
vLLM prefix-cache counters, fed by a toy prefix cache: prompts are split into words (one word = one token, as
in bench/prompts.py) and blocks of `block_size` words; a block hits when the same block chain was seen
before. POST /reset_prefix_cache empties it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeBackend:
    model: str = "fake-model"
    ttft_s: float = 0.0
    itl_s: float = 0.0
    block_size: int = 16
    report_cached_tokens: bool = True
    fail_every: int = 0  # every Nth completion request answers HTTP 500 (0: never)
    slots: int = 0  # requests served at once, the rest queue (0: unlimited), to make saturation testable
    hits_tokens: float = 0.0
    query_tokens: float = 0.0
    requests: int = 0
    seen_blocks: set[int] = field(default_factory=set)
    prompt_words: list[int] = field(default_factory=list)  # per request, in arrival order (for tests)
    authorization: list[str] = field(default_factory=list)
    session_ids: list[str] = field(default_factory=list)  # x-session-id of each request
    clock: Callable[[], float] = time.perf_counter  # tests share the event loop's fake clock with the client
    _slots: asyncio.Semaphore | None = None

    def cache_lookup(self, words: list[str]) -> int:
        """Tokens of `words` found in the toy prefix cache (whole leading blocks), then insert them."""
        cached, parent, hitting = 0, 0, True
        for start in range(0, len(words) - len(words) % self.block_size, self.block_size):
            parent = hash((parent, *words[start : start + self.block_size]))
            if hitting and parent in self.seen_blocks:
                cached += self.block_size
            else:
                hitting = False
                self.seen_blocks.add(parent)
        self.query_tokens += len(words)
        self.hits_tokens += cached
        return cached


_MODEL_KEY: web.AppKey[FakeBackend] = web.AppKey("fake", FakeBackend)


def _prompt_words(body: dict[str, Any]) -> list[str]:
    if "messages" in body:
        return " ".join(str(m.get("content", "")) for m in body["messages"]).split()
    return str(body.get("prompt", "")).split()


def _error(status: int, message: str, kind: str, param: str | None = None) -> web.Response:
    doc = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(doc, status=status)


async def _models(request: web.Request) -> web.Response:
    fake = request.app[_MODEL_KEY]
    return web.json_response({"object": "list", "data": [{"id": fake.model, "object": "model"}]})


async def _metrics(request: web.Request) -> web.Response:
    fake = request.app[_MODEL_KEY]
    labels = f'{{engine="0",model_name="{fake.model}"}}'
    text = (
        "# TYPE vllm:prefix_cache_queries_total counter\n"
        f"vllm:prefix_cache_queries_total{labels} {fake.query_tokens}\n"
        "# TYPE vllm:prefix_cache_hits_total counter\n"
        f"vllm:prefix_cache_hits_total{labels} {fake.hits_tokens}\n"
    )
    return web.Response(text=text, content_type="text/plain")


async def _reset(request: web.Request) -> web.Response:
    request.app[_MODEL_KEY].seen_blocks.clear()
    return web.Response(text="ok")


@functools.lru_cache(maxsize=64)
def _chunk(chat: bool, model: str, text: str, finish: str | None) -> bytes:
    if chat:
        choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish}
        obj = "text_completion"
    doc = {"id": "cmpl-fake", "object": obj, "model": model, "choices": [choice]}
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


async def _complete(request: web.Request) -> web.StreamResponse:
    fake = request.app[_MODEL_KEY]
    if not fake.slots:
        return await _serve_completion(request, fake)
    if fake._slots is None:
        fake._slots = asyncio.Semaphore(fake.slots)
    async with fake._slots:
        return await _serve_completion(request, fake)


async def _serve_completion(request: web.Request, fake: FakeBackend) -> web.StreamResponse:
    arrived = fake.clock()
    chat = request.path.endswith("/chat/completions")
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "request body is not valid JSON", "BadRequestError")
    if body.get("model") != fake.model:
        return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError", "model")
    fake.requests += 1
    fake.authorization.append(request.headers.get("Authorization", ""))
    fake.session_ids.append(request.headers.get("x-session-id", ""))
    if fake.fail_every and fake.requests % fake.fail_every == 0:
        return _error(500, "injected failure", "InternalServerError")
    n = int(body.get("max_tokens") or 16)
    words = _prompt_words(body)
    fake.prompt_words.append(len(words))
    cached = fake.cache_lookup(words)
    usage: dict[str, Any] = {
        "prompt_tokens": len(words),
        "completion_tokens": n,
        "total_tokens": len(words) + n,
    }
    if fake.report_cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    if not body.get("stream"):
        await asyncio.sleep(max(0.0, arrived + fake.ttft_s + (n - 1) * fake.itl_s - fake.clock()))
        key = "message" if chat else "text"
        choice = {"index": 0, key: {"role": "assistant", "content": " tok" * n} if chat else " tok" * n}
        return web.json_response(
            {"id": "cmpl-fake", "model": fake.model, "choices": [choice], "usage": usage}
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    if fake.ttft_s == 0 and fake.itl_s == 0:  # instant backend: one write, so the server stays cheap
        await resp.write(
            _chunk(chat, fake.model, " tok", None) * (n - 1) + _chunk(chat, fake.model, " tok", "length")
        )
        n = 0
    for i in range(n):
        delay = arrived + fake.ttft_s + i * fake.itl_s - fake.clock()
        if delay > 0:
            await asyncio.sleep(delay)
        await resp.write(_chunk(chat, fake.model, " tok", "length" if i == n - 1 else None))
    if (body.get("stream_options") or {}).get("include_usage"):
        tail = {"id": "cmpl-fake", "model": fake.model, "choices": [], "usage": usage}
        await resp.write(b"data: " + json.dumps(tail).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def make_app(fake: FakeBackend) -> web.Application:
    app = web.Application()
    app[_MODEL_KEY] = fake
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/reset_prefix_cache", _reset)
    app.router.add_post("/v1/completions", _complete)
    app.router.add_post("/v1/chat/completions", _complete)
    return app


async def start(fake: FakeBackend, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve `fake` on host:port (0: a free port); returns the runner (call .cleanup()) and the base URL."""
    runner = web.AppRunner(make_app(fake), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, f"http://{host}:{bound}"


def main(argv: list[str] | None = None) -> None:
    """`python -m eksinfer.bench.fakeserver --port 8000 --ttft-ms 50 --itl-ms 10` (uvloop when installed)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default="fake-model")
    p.add_argument("--ttft-ms", type=float, default=0.0)
    p.add_argument("--itl-ms", type=float, default=0.0)
    p.add_argument("--slots", type=int, default=0, help="Requests served at once (0: unlimited).")
    args = p.parse_args(argv)
    fake = FakeBackend(
        model=args.model, ttft_s=args.ttft_ms / 1000, itl_s=args.itl_ms / 1000, slots=args.slots
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(fake), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
