"""The SSE client against the real vLLM 0.32 streams (captures in tests/sim/data) and failure modes.

Every test runs on a virtual-time event loop (looptime, `virtual_time` marker): sleeps end exactly when
due and I/O takes no virtual time, so with the client timing on that loop's clock the measured gaps are
exactly the gaps the servers here were told to leave, on any machine.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from eksinfer.bench import BenchConfig, run_bench
from eksinfer.bench.client import RequestRecord, send
from eksinfer.errors import UnknownNameError, UpstreamError

SAMPLES = Path(__file__).parents[1] / "sim" / "data"  # vLLM 0.32 captures (CPU build, 2026-11-28)
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason="tests/sim/data not found")
pytestmark = pytest.mark.virtual_time
EXACT = 1e-9  # s: float rounding only


async def _serve(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def _replayer(body: bytes, gap_s: float):
    """Sends the fixture's SSE events one by one, `gap_s` apart, so timings are known."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in body.split(b"\n\n"):
            if event.strip():
                await resp.write(event + b"\n\n")
                await asyncio.sleep(gap_s)
        await resp.write_eof()
        return resp

    return handler


async def _one(url: str, rec: RequestRecord, timeout_s: float = 10.0) -> RequestRecord:
    clock = asyncio.get_running_loop().time
    async with aiohttp.ClientSession() as session:
        await send(session, url, {"stream": True}, rec, timeout_s=timeout_s, keep_text=True, clock=clock)
    return rec


@needs_samples
async def test_real_vllm_completions_stream():
    runner, url = await _serve(_replayer((SAMPLES / "completions_stream.sse").read_bytes(), 0.02))
    try:
        rec = await _one(url + "/v1/completions", RequestRecord(0, 0, 0, url))
    finally:
        await runner.cleanup()
    assert rec.ok, rec.error_detail
    # 4 text chunks (the last, "\x7f", with finish_reason), then usage {completion_tokens: 4}, then [DONE]
    assert rec.output_tokens == 4
    assert rec.prompt_tokens == 8
    assert rec.cached_tokens is None  # vLLM sends no prompt_tokens_details without the flag
    assert len(rec.itl_s) == 3
    assert rec.text == " bochwepl yoze rubo\x7f"
    assert rec.itl_s == pytest.approx([0.02] * 3, abs=EXACT)  # one sample per chunk, 20 ms apart
    assert rec.ttft_s == pytest.approx(0.0, abs=EXACT)  # the first event carries text
    assert rec.last_token_s == pytest.approx(0.06, abs=EXACT)
    assert rec.e2e_s == pytest.approx(0.10, abs=EXACT)  # usage 20 ms after the last token, [DONE] 20 ms later


@needs_samples
async def test_real_vllm_chat_stream_role_chunk_is_not_the_first_token():
    runner, url = await _serve(_replayer((SAMPLES / "chat_stream.sse").read_bytes(), 0.02))
    try:
        rec = await _one(url + "/v1/chat/completions", RequestRecord(0, 0, 0, url))
    finally:
        await runner.cleanup()
    assert rec.ok, rec.error_detail
    assert rec.text.startswith("WereThe kagika")
    assert rec.ttft_s == pytest.approx(0.02, abs=EXACT)  # the role chunk (empty content) came 20 ms earlier
    assert rec.output_tokens == 4  # usage.completion_tokens
    assert len(rec.itl_s) == 3


@pytest.mark.parametrize(
    ("body", "kind", "detail"),
    [
        (b'data: {"choices":[{"text":"a"}]}\n\ndata: {"error":{"message":"boom"}}\n\n', "stream", "boom"),
        (b"data: {not json\n\n", "stream", "bad SSE JSON"),
        (b'data: {"choices":[{"text":""}]}\n\ndata: [DONE]\n\n', "empty", "no text-bearing chunk"),
    ],
)
async def test_broken_streams_are_errors_by_kind(body, kind, detail):
    runner, url = await _serve(_replayer(body, 0.0))
    try:
        rec = await _one(url + "/v1/completions", RequestRecord(0, 0, 0, url))
    finally:
        await runner.cleanup()
    assert rec.error == kind
    assert detail in rec.error_detail


async def test_timeout_and_http_errors(fake_server):
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response()

    runner, url = await _serve(slow)
    try:
        rec = await _one(url + "/v1/completions", RequestRecord(0, 0, 0, url), timeout_s=0.2)
    finally:
        await runner.cleanup()
    assert rec.error == "timeout"

    async with fake_server(fail_every=2) as (_, url):
        cfg = BenchConfig(target=url, model="fake-model", concurrency=1, num_requests=6, max_tokens=3)
        result = await run_bench(cfg)
    assert result.summary["errors"] == {"http_500": 3}
    assert result.summary["requests"] == {"completed": 3, "failed": 3, "total": 6}
    assert "injected failure" in next(r.error_detail for r in result.records if r.error)


async def test_unreachable_target_and_wrong_model(fake_server, unused_tcp_port):
    with pytest.raises(UpstreamError, match=f"cannot reach target http://127.0.0.1:{unused_tcp_port}"):
        await run_bench(BenchConfig(target=f"http://127.0.0.1:{unused_tcp_port}", model="m"))
    async with fake_server() as (fake, url):
        with pytest.raises(UnknownNameError, match="did you mean fake-model"):
            await run_bench(BenchConfig(target=url, model="fake-modle", num_requests=1))
        assert fake.requests == 0  # nothing was sent
        # check_model off: the requests go out and come back as 404s, counted by kind
        cfg = BenchConfig(target=url, model="other", num_requests=2, check_model=False)
        result = await run_bench(cfg)
    assert result.summary["errors"] == {"http_404": 2}


async def test_non_streamed_requests(fake_server):
    clock = asyncio.get_running_loop().time
    async with fake_server(ttft_s=0.03, itl_s=0.005, clock=clock) as (_, url):
        cfg = BenchConfig(target=url, model="fake-model", endpoint="chat", stream=False, num_requests=2,
                          max_tokens=5)  # fmt: skip
        result = await run_bench(cfg, clock=clock)
    s = result.summary
    assert s["requests"]["completed"] == 2
    assert s["ttft_ms"]["count"] == 0  # no TTFT without streaming
    assert s["e2e_ms"]["p50"] == pytest.approx(50, abs=1e-6)  # 30 + 4 * 5 ms
    assert s["output_tokens"] == 10


async def test_fake_server_speaks_openai_to_the_official_sdk(fake_server):
    import openai

    async with fake_server() as (_, url):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-x", max_retries=0)
        stream = await client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "a b c"}], max_tokens=3, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        pieces, usage = [], None
        async for chunk in stream:
            pieces += [c.delta.content for c in chunk.choices if c.delta.content]
            usage = chunk.usage or usage
        models = await client.models.list()
        with pytest.raises(openai.NotFoundError):
            await client.completions.create(model="nope", prompt="x", max_tokens=1)
        await client.close()
    assert pieces == [" tok"] * 3
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 3)
    assert [m.id for m in models.data] == ["fake-model"]


async def test_connections_are_reused_across_requests():
    from eksinfer.bench.fakeserver import FakeBackend, make_app

    peers: set[object] = set()

    @web.middleware
    async def record_peer(request: web.Request, handler):
        peers.add(request.transport.get_extra_info("peername"))
        return await handler(request)

    app = make_app(FakeBackend(ttft_s=0.001, itl_s=0.001))
    app.middlewares.append(record_peer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        cfg = BenchConfig(target=url, model="fake-model", concurrency=4, num_requests=100, max_tokens=5)
        result = await run_bench(cfg)
    finally:
        await runner.cleanup()
    assert result.summary["requests"]["completed"] == 100
    assert len(peers) <= 5  # 4 in flight (+ the /v1/models check), not one connection per request
