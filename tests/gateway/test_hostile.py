"""Hostile clients and broken engines against the gateway: each case is a reproduction from the hardening
probe, and the only acceptable answers are an OpenAI-style error with the right status and, in the logs, at
most one warning line (never a traceback at ERROR)."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from eksinfer.gateway.config import parse_config
from eksinfer.gateway.runtime import GatewayRuntime, build_runtime
from tests.gateway.hostile import CuttingEngine, assert_openai_error, post, raw_request
from tests.gateway.test_proxy_fakes import FakeEngine, RoundRobinRouter
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)

CHAT = b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}'


async def start(urls: list[str], **sections: Any) -> GatewayRuntime:
    server = {"host": "127.0.0.1", "port": 0, **sections.pop("server", {})}
    config = parse_config(
        {
            "server": server,
            "endpoints": {"static": [{"url": u} for u in urls]},
            "scrape": {"interval_s": 0.05},
            **sections,
        }
    )
    runtime = build_runtime(config, router=RoundRobinRouter())
    await runtime.start()
    await until(lambda: all(s.models for s in runtime.registry.all()), timeout_s=10)
    return runtime


@pytest.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    e = await FakeEngine().start()
    yield e
    await e.stop()


@pytest.fixture
async def gateway(engine: FakeEngine) -> AsyncIterator[GatewayRuntime]:
    runtime = await start([engine.url])
    yield runtime
    await runtime.stop()


def port(runtime: GatewayRuntime) -> int:
    assert runtime.port is not None
    return runtime.port


def requests_counted(runtime: GatewayRuntime, status: str) -> float:
    text = runtime.metrics.render().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("eksinfer_gateway_requests_total{") and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def all_counted(runtime: GatewayRuntime) -> float:
    text = runtime.metrics.render().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("eksinfer_gateway_requests_total{")
    )


async def test_json_nesting_bomb_is_a_400(gateway: GatewayRuntime, caplog: pytest.LogCaptureFixture) -> None:
    bomb = b'{"model": "tiny", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    answer = await raw_request(port(gateway), post("/v1/chat/completions", bomb))
    error = assert_openai_error(answer, 400)
    assert error["code"] == "invalid_json"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_nesting_below_the_bound_is_still_accepted(gateway: GatewayRuntime) -> None:
    deep = b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * 64
    deep += b"]" * 64 + b"}"
    answer = await raw_request(port(gateway), post("/v1/chat/completions", deep))
    assert answer.status == 200, answer


async def test_non_utf8_authorization_is_a_401(
    engine: FakeEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("EKSINFER_HOSTILE_KEYS", "k-one")
    runtime = await start([engine.url], auth={"api_keys_env": "EKSINFER_HOSTILE_KEYS"})
    try:
        for header in (b"Authorization: Bearer \xff\xfe\xfd", b"x-api-key: \xc3\x28"):
            answer = await raw_request(port(runtime), post("/v1/chat/completions", CHAT, header))
            assert assert_openai_error(answer, 401)["code"] == "invalid_api_key"
        good = await raw_request(port(runtime), post("/v1/chat/completions", CHAT, b"x-api-key: k-one"))
        assert good.status == 200
    finally:
        await runtime.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_engine_cutting_a_whole_body_is_a_502_counted_once(caplog: pytest.LogCaptureFixture) -> None:
    engine = await CuttingEngine().start()
    runtime = await start([engine.url])
    try:
        answer = await raw_request(
            port(runtime), post("/v1/completions", b'{"model": "tiny", "prompt": "x"}')
        )
        assert assert_openai_error(answer, 502)["code"] == "upstream_broken"
        assert engine.cut == 1
        assert all_counted(runtime) == 1  # one request, one count
        assert requests_counted(runtime, "502") == 1
    finally:
        await runtime.stop()
        await engine.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


BAD_HEADERS = {
    "9 KB header": [b"x-big: " + b"a" * 9 * 1024],
    "64 KB header": [b"x-big: " + b"a" * 64 * 1024],
    "200 headers": [f"x-h{i}: v".encode() for i in range(200)],
    "content-length with transfer-encoding": [b"Transfer-Encoding: chunked"],
    "duplicate content-length": [b"Content-Length: 5"],
    "header without a colon": [b"this is not a header"],
}


@pytest.mark.parametrize("extra", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
async def test_malformed_headers_get_an_openai_400_and_one_warning(
    gateway: GatewayRuntime, caplog: pytest.LogCaptureFixture, extra: list[bytes]
) -> None:
    caplog.set_level(logging.INFO)
    answer = await raw_request(port(gateway), post("/v1/chat/completions", CHAT, *extra))
    assert_openai_error(answer, 400)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].exc_info is None
    assert "\n" not in warnings[0].getMessage()
    assert re.search(r"bad HTTP request", warnings[0].getMessage())
    async with httpx.AsyncClient() as client:  # and the gateway keeps serving
        ok = await client.post(f"http://127.0.0.1:{port(gateway)}/v1/chat/completions", content=CHAT)
    assert ok.status_code == 200


async def test_engine_address_is_not_sent_to_clients_unless_asked(engine: FakeEngine) -> None:
    for expose, expected in ((False, None), (True, engine.url.removeprefix("http://"))):
        runtime = await start([engine.url], server={"route_headers": expose})
        try:
            async with httpx.AsyncClient() as client:
                r = await client.post(f"http://127.0.0.1:{port(runtime)}/v1/chat/completions", content=CHAT)
            assert r.status_code == 200
            assert r.headers.get("x-eksinfer-endpoint") == expected
        finally:
            await runtime.stop()


def test_only_429_and_503_carry_retry_after() -> None:
    from eksinfer.gateway.http import error_response

    assert error_response(429, "busy").headers["Retry-After"] == "1"
    assert error_response(503, "none").headers["Retry-After"] == "1"
    assert "Retry-After" not in error_response(400, "bad").headers
