"""Slow and greedy clients against the gateway (slowloris): read deadlines, a connection limit, and
requests counted toward `max_inflight` from the first body byte. Deadlines are configured small and each
test waits for the server to act (with a generous bound), never comparing durations."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from eksinfer.gateway.runtime import GatewayRuntime
from tests.gateway.hostile import closed_by_server, parse_answer, read_answer, trickle
from tests.gateway.test_hostile import CHAT, port, start
from tests.gateway.test_proxy_fakes import FakeEngine
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


@pytest.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    e = await FakeEngine().start()
    yield e
    await e.stop()


async def open_conn(runtime: GatewayRuntime) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port(runtime))


async def test_slow_headers_are_cut_off(engine: FakeEngine) -> None:
    runtime = await start([engine.url], server={"idle_timeout_s": 0.3})
    try:
        reader, writer = await open_conn(runtime)
        writer.write(HEAD)
        sender = asyncio.create_task(trickle(writer, b"x-slow: 1\r\n"))
        sent = await closed_by_server(reader)
        assert sent == b""  # closed without an answer: there was never a request to answer
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()
    finally:
        await runtime.stop()


async def test_slow_body_gets_408_and_is_closed(engine: FakeEngine) -> None:
    runtime = await start([engine.url], server={"body_timeout_s": 0.3})
    try:
        reader, writer = await open_conn(runtime)
        writer.write(HEAD + f"Content-Length: {len(CHAT) + 1000}\r\n\r\n".encode() + CHAT[:10])
        sender = asyncio.create_task(trickle(writer, b" "))
        answer = parse_answer(await closed_by_server(reader))
        assert answer.status == 408
        assert answer.json()["error"]["code"] == "body_timeout"
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()
        assert engine.requests == 0
        await until(lambda: runtime.proxy is not None and runtime.proxy.inflight == 0)
    finally:
        await runtime.stop()


async def test_connections_past_the_limit_get_503_with_retry_after(engine: FakeEngine) -> None:
    runtime = await start([engine.url], server={"max_connections": 3})
    held = [await open_conn(runtime) for _ in range(3)]
    try:
        for _, writer in held:
            writer.write(HEAD)  # headers started, never finished
        await until(
            lambda: (
                runtime._runner is not None
                and runtime._runner.guarded is not None
                and runtime._runner.guarded.open_connections == 3
            )
        )
        reader, writer = await open_conn(runtime)
        answer = parse_answer(await closed_by_server(reader))
        writer.close()
        assert answer.status == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["error"]["code"] == "overloaded"
        for _, w in held:
            w.close()
        guarded = runtime._runner.guarded  # type: ignore[union-attr]
        assert guarded is not None
        await until(lambda: guarded.open_connections == 0)
        async with httpx.AsyncClient() as client:  # served again once connections are freed
            ok = await client.post(f"http://127.0.0.1:{port(runtime)}/v1/chat/completions", content=CHAT)
        assert ok.status_code == 200
    finally:
        for _, w in held:
            w.close()
        await runtime.stop()


async def test_requests_whose_body_is_arriving_count_toward_max_inflight(engine: FakeEngine) -> None:
    runtime = await start([engine.url], server={"max_inflight": 2})
    held = [await open_conn(runtime) for _ in range(2)]
    try:
        for _, writer in held:
            writer.write(HEAD + f"Content-Length: {len(CHAT)}\r\n\r\n".encode() + CHAT[:5])
        proxy = runtime.proxy
        assert proxy is not None
        await until(lambda: proxy.inflight == 2)
        async with httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{port(runtime)}/v1/chat/completions"
            refused = await client.post(url, content=CHAT)
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            for reader, writer in held:  # the slow bodies finish and are served
                writer.write(CHAT[5:])
                await writer.drain()
                assert (await read_answer(reader)).status == 200
            await until(lambda: proxy.inflight == 0)
            ok = await client.post(url, content=CHAT)
            assert ok.status_code == 200
    finally:
        for _, w in held:
            w.close()
        await runtime.stop()
