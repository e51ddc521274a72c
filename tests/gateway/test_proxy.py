"""The gateway proxy end to end on 127.0.0.1: real clients (openai SDK, httpx) -> gateway -> fake engines."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eksinfer.gateway.config import parse_config
from eksinfer.gateway.runtime import GatewayRuntime, build_runtime
from tests.gateway.test_proxy_fakes import EngineBehaviour, FakeEngine, RoundRobinRouter
from tests.waiting import DEADLINE_S, LoopWatch, until

pytestmark = pytest.mark.timeout(30)


async def start_gateway(engines: list[FakeEngine], scrape_failures: int = 2, **server: Any) -> GatewayRuntime:
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "route_headers": True, **server},
            "endpoints": {"static": [{"url": e.url} for e in engines]},
            "scrape": {"interval_s": 0.05, "stale_after_s": 1.0, "unhealthy_after_failures": scrape_failures},
            # Tests here hold requests in flight as long as they need: no stall watchdog (test_cascade.py).
            "resilience": {"stall_after_s": 0},
        }
    )
    runtime = build_runtime(config, router=RoundRobinRouter())
    await runtime.start()
    await until(lambda: all(s.models for s in runtime.registry.all()), what="engines' models scraped")
    return runtime


@pytest.fixture
async def engines() -> AsyncIterator[list[FakeEngine]]:
    started = [await FakeEngine().start(), await FakeEngine().start()]
    yield started
    for engine in started:
        await engine.stop()


@pytest.fixture
async def gateway(engines: list[FakeEngine]) -> AsyncIterator[GatewayRuntime]:
    runtime = await start_gateway(engines)
    yield runtime
    await runtime.stop()


def base(runtime: GatewayRuntime) -> str:
    return f"http://127.0.0.1:{runtime.port}"


async def test_chat_streams_through_openai_sdk_chunk_by_chunk(
    gateway: GatewayRuntime, engines: list[FakeEngine]
) -> None:
    # The engine sends each next chunk only after the client has received the previous one, so the stream
    # completes only if the gateway forwards chunk by chunk: a buffering proxy would deadlock until timeout.
    step = asyncio.Event()
    for engine in engines:
        engine.behaviour = EngineBehaviour(tokens=3, step=step)
    client = openai.AsyncOpenAI(base_url=base(gateway) + "/v1", api_key="unused", max_retries=0)
    pieces: list[str] = []
    stream = await client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    async with asyncio.timeout(DEADLINE_S):
        async for chunk in stream:
            pieces.append(chunk.choices[0].delta.content or "")
            step.set()
    assert pieces == [" w0", " w1", " w2"]
    assert gateway.router.first_tokens == 1  # type: ignore[attr-defined]
    assert gateway.router.finished == [True]  # type: ignore[attr-defined]
    await client.close()


async def test_unknown_paths_and_methods_are_openai_errors(gateway: GatewayRuntime) -> None:
    async with httpx.AsyncClient() as client:
        missing = await client.get(base(gateway) + "/v1/nothing")
        wrong = await client.get(base(gateway) + "/v1/chat/completions")
        health = await client.get(base(gateway) + "/health")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    assert health.status_code == 200


async def test_completion_and_round_robin(gateway: GatewayRuntime, engines: list[FakeEngine]) -> None:
    client = openai.AsyncOpenAI(base_url=base(gateway) + "/v1", api_key="unused", max_retries=0)
    for _ in range(4):
        result = await client.completions.create(model="tiny", prompt="hello", max_tokens=4)
        assert result.choices[0].text == " w0 w1 w2 w3"
    assert [e.requests for e in engines] == [2, 2]
    assert [len(set(e.peers)) for e in engines] == [1, 1]  # one kept-alive upstream connection per engine
    assert engines[0].bodies[0] == {"model": "tiny", "prompt": "hello", "max_tokens": 4}
    states = gateway.registry.all()
    assert [s.inflight_requests for s in states] == [0, 0]
    assert [s.inflight_prompt_tokens for s in states] == [0, 0]
    await client.close()


async def test_models_is_the_union_of_endpoints() -> None:
    first, second = await FakeEngine(model="a").start(), await FakeEngine(model="b").start()
    runtime = await start_gateway([first, second])
    try:
        async with httpx.AsyncClient() as client:
            doc = (await client.get(base(runtime) + "/v1/models")).json()
            assert [m["id"] for m in doc["data"]] == ["a", "b"]
            r = await client.post(base(runtime) + "/v1/completions", json={"model": "b", "prompt": "x"})
            assert r.status_code == 200
            assert (first.requests, second.requests) == (0, 1)
            assert r.headers["x-eksinfer-endpoint"] == second.url.removeprefix("http://")
    finally:
        await runtime.stop()
        await first.stop()
        await second.stop()


async def test_client_disconnect_cancels_upstream(gateway: GatewayRuntime, engines: list[FakeEngine]) -> None:
    step = asyncio.Event()  # never set: the engine sends one chunk, then waits for the test forever
    for engine in engines:
        engine.behaviour = EngineBehaviour(tokens=50, step=step)
    body = {"model": "tiny", "prompt": "x", "stream": True}
    async with (
        httpx.AsyncClient() as client,
        client.stream("POST", base(gateway) + "/v1/completions", json=body) as resp,
    ):
        async for line in resp.aiter_lines():
            if line.startswith("data:"):
                break
    await until(lambda: sum(e.cancelled for e in engines) == 1, what="upstream request cancelled")
    await until(lambda: gateway.router.finished == [False], what="router told")  # type: ignore[attr-defined]
    assert sum(e.completed for e in engines) == 0
    assert all(s.inflight_requests == 0 for s in gateway.registry.all())
    assert gateway.router.finished == [False]  # type: ignore[attr-defined]


async def test_endpoint_loss_mid_run_retries_elsewhere(engines: list[FakeEngine]) -> None:
    # The scraper would notice the loss only after 1000 failed reads: the proxy must notice it by itself.
    gateway = await start_gateway(engines, scrape_failures=1000)
    try:
        async with httpx.AsyncClient() as client:
            url = base(gateway) + "/v1/completions"
            for _ in range(2):
                assert (await client.post(url, json={"model": "tiny", "prompt": "x"})).status_code == 200
            await engines[0].stop()
            statuses = [
                (await client.post(url, json={"model": "tiny", "prompt": "x"})).status_code for _ in range(6)
            ]
            assert statuses == [200] * 6
            assert engines[1].requests == 7
            assert not gateway.registry.all()[0].healthy
            metrics = (await client.get(base(gateway) + "/metrics")).text
            assert 'eksinfer_gateway_upstream_retries_total{model="tiny"} 1.0' in metrics
            await engines[1].stop()
            r = await client.post(url, json={"model": "tiny", "prompt": "x"})
            assert r.status_code == 502
            assert r.json()["error"]["code"] == "upstream_failed"
    finally:
        await gateway.stop()


async def test_stream_broken_by_engine_ends_with_error_event(
    gateway: GatewayRuntime, engines: list[FakeEngine]
) -> None:
    for engine in engines:
        engine.behaviour = EngineBehaviour(tokens=5, break_after=2)
    body = {"model": "tiny", "prompt": "x", "stream": True}
    async with httpx.AsyncClient() as client:
        r = await client.post(base(gateway) + "/v1/completions", json=body)
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert len(events) == 3
    assert json.loads(events[-1])["error"]["code"] == "upstream_broken"


@pytest.mark.parametrize(
    ("content", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"prompt": "x"}', 400, "model"),
        (b'{"model": 7, "prompt": "x"}', 400, "model"),
        (b'{"model": "tiny"}', 400, "prompt"),
        (b'{"model": "nope", "prompt": "x"}', 404, "model"),
    ],
)
async def test_malformed_input_gets_openai_errors(
    gateway: GatewayRuntime, content: bytes, status: int, param: str | None
) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.post(
            base(gateway) + "/v1/completions", content=content, headers={"Content-Type": "application/json"}
        )
    assert r.status_code == status
    error = r.json()["error"]
    assert error["param"] == param
    assert error["message"]


async def test_chat_needs_messages_list(gateway: GatewayRuntime) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.post(
            base(gateway) + "/v1/chat/completions", json={"model": "tiny", "messages": "hi"}
        )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages"


async def test_body_limit_and_inflight_limit(engines: list[FakeEngine]) -> None:
    runtime = await start_gateway(engines, max_body_bytes=1000, max_inflight=1)
    try:
        async with httpx.AsyncClient() as client:
            url = base(runtime) + "/v1/completions"
            r = await client.post(url, json={"model": "tiny", "prompt": "x" * 2000})
            assert r.status_code == 413
            assert r.json()["error"]["code"] == "body_too_large"
            hold = asyncio.Event()
            for engine in engines:
                engine.behaviour = EngineBehaviour(hold=hold)
            slow = asyncio.create_task(client.post(url, json={"model": "tiny", "prompt": "x"}))
            await until(lambda: sum(e.held for e in engines) == 1, what="first request held by its engine")
            r = await client.post(url, json={"model": "tiny", "prompt": "x"})
            assert r.status_code == 429
            hold.set()
            assert (await slow).status_code == 200
    finally:
        await runtime.stop()


async def test_first_token_timeout(engines: list[FakeEngine]) -> None:
    # The engine never answers (it would in an hour; the test's own timeout is 30 s): only the gateway's
    # first-token timeout can end the request, and it must end it with a 504 and cancel it upstream.
    runtime = await start_gateway(engines, first_token_timeout_s=0.3, idle_stream_timeout_s=3600)
    try:
        for engine in engines:
            engine.behaviour = EngineBehaviour(hang=True)
        async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
            r = await client.post(base(runtime) + "/v1/completions", json={"model": "tiny", "prompt": "x"})
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "upstream_timeout"
        await until(lambda: sum(e.cancelled for e in engines) == 1, what="timed-out request cancelled")
    finally:
        await runtime.stop()


async def test_idle_stream_timeout(engines: list[FakeEngine]) -> None:
    # The engine sends one chunk and then nothing (it waits for a step the test never gives): the stream
    # goes idle, and only the idle timeout can end it, with an in-band error event.
    runtime = await start_gateway(engines, first_token_timeout_s=3600, idle_stream_timeout_s=0.3)
    try:
        for engine in engines:
            engine.behaviour = EngineBehaviour(tokens=3, step=asyncio.Event())
        async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
            body = {"model": "tiny", "prompt": "x", "stream": True}
            r = await client.post(base(runtime) + "/v1/completions", json=body)
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert json.loads(events[0])["choices"][0]["text"] == " w0"
        assert json.loads(events[-1])["error"]["code"] == "upstream_timeout"
        await until(lambda: sum(e.cancelled for e in engines) == 1, what="idle stream cancelled upstream")
    finally:
        await runtime.stop()


async def test_api_keys_from_env(engines: list[FakeEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EKSINFER_TEST_KEYS", "k-one, k-two")
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "auth": {"api_keys_env": "EKSINFER_TEST_KEYS"},
            "endpoints": {"static": [{"url": e.url, "models": ["tiny"]} for e in engines]},
        }
    )
    runtime = build_runtime(config, router=RoundRobinRouter())
    await runtime.start()
    try:
        assert "k-one" not in repr(runtime.keys)
        url = base(runtime)
        good = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k-two", max_retries=0)
        assert (await good.completions.create(model="tiny", prompt="x")).choices[0].text
        bad = openai.AsyncOpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await bad.completions.create(model="tiny", prompt="x")
        async with httpx.AsyncClient() as client:
            assert (await client.get(url + "/v1/models")).status_code == 401
            assert (await client.get(url + "/health")).status_code == 200
            r = await client.get(url + "/v1/models", headers={"x-api-key": "k-one"})
            assert r.status_code == 200
        seen = [h for e in engines for h in e.headers]
        assert len(seen) == 1
        assert "Authorization" not in seen[0]  # the client's key is not passed on to engines
        assert "Accept-Encoding" not in seen[0]  # bodies are relayed as is: engines must not compress
        await good.close()
        await bad.close()
    finally:
        await runtime.stop()


async def test_health_ready_metrics(gateway: GatewayRuntime, engines: list[FakeEngine]) -> None:
    async with httpx.AsyncClient() as client:
        url = base(gateway)
        assert (await client.get(url + "/health")).json() == {"status": "ok"}
        ready = await client.get(url + "/ready")
        assert ready.status_code == 200
        assert ready.json()["healthy"] == 2
        await client.post(url + "/v1/completions", json={"model": "tiny", "prompt": "x"})
        await client.post(url + "/v1/completions", json={"model": "nope", "prompt": "x"})
        text = (await client.get(url + "/metrics")).text
    ep = engines[0].url.removeprefix("http://")
    ok = f'endpoint="{ep}",model="tiny",pool="default",route="/v1/completions",status="200"'
    assert f"eksinfer_gateway_requests_total{{{ok}}} 1.0" in text
    # an unknown model is refused before routing: no client-chosen label value
    refused = 'endpoint="",model="",pool="",route="/v1/completions",status="404"'
    assert f"eksinfer_gateway_requests_total{{{refused}}} 1.0" in text
    assert 'eksinfer_gateway_decisions_total{preset="round-robin",reason="round-robin"} 1.0' in text
    assert 'eksinfer_gateway_scheduling_duration_seconds_count{model="tiny"} 1.0' in text
    assert "eksinfer_gateway_router_index_blocks 7.0" in text
    assert 'eksinfer_gateway_router_subscribers_lag_seconds{endpoint="e1"} 0.5' in text
    assert "# TYPE eksinfer_gateway_router_subscribers_gaps_total counter" in text
    assert 'eksinfer_gateway_router_subscribers_gaps_total{endpoint="e1"} 2.0' in text
    assert f'eksinfer_gateway_scrape_stale{{endpoint="{ep}",pool="default"}} 0.0' in text
    ttft = 'model="tiny",pool="default",route="/v1/completions"'
    assert f"eksinfer_gateway_time_to_first_token_seconds_count{{{ttft}}} 1.0" in text
    assert "_ms" not in text  # base units only


async def test_ready_is_503_without_endpoints() -> None:
    config = parse_config({"server": {"host": "127.0.0.1", "port": 0}})
    runtime = build_runtime(config, router=RoundRobinRouter())
    await runtime.start()
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(base(runtime) + "/ready")).status_code == 503
            r = await client.post(base(runtime) + "/v1/completions", json={"model": "tiny", "prompt": "x"})
            assert r.status_code == 404
    finally:
        await runtime.stop()
    assert runtime.router.stopped  # type: ignore[attr-defined]


async def test_event_loop_keeps_ticking_under_load(
    gateway: GatewayRuntime, engines: list[FakeEngine]
) -> None:
    """Nothing blocks the event loop: a 50 ms ticker on the loop keeps ticking while streamed requests run.

    The load runs until it has lasted at least 20 ticks and 300 requests, so the ticker sees the load
    whatever the machine's speed. A blocked loop shows up as a long gap in the loop's ticker; a machine too
    busy to run the process shows up as the same gap in a ticker on a thread beside it, which no event loop
    blocks. The verdict compares the two, so a busy machine does not fail the test and a blocking call
    (a synchronous tokenizer load, a `time.sleep`) of half a second or more does.
    """
    statuses: list[int] = []
    body = {"model": "tiny", "prompt": "x" * 500, "stream": True}

    async def worker(session: aiohttp.ClientSession, watch: LoopWatch) -> None:
        while len(watch.loop_gaps) < 20 or len(statuses) < 300:
            async with session.post(base(gateway) + "/v1/completions", json=body) as resp:
                await resp.read()
                statuses.append(resp.status)

    async with aiohttp.ClientSession() as session, LoopWatch() as watch, asyncio.timeout(DEADLINE_S):
        await asyncio.gather(*(worker(session, watch) for _ in range(50)))
    assert statuses == [200] * len(statuses)
    assert sum(e.completed for e in engines) == len(statuses)
    assert sum(len(set(e.peers)) for e in engines) <= 60  # streamed answers leave their connection reusable
    watch.assert_not_blocked()


async def test_real_router_kv_aware_through_the_gateway(engines: list[FakeEngine]) -> None:
    """The real router (kv-aware preset, approximate tokenizer since the fake engine has no /tokenize)."""
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "route_headers": True},
            "endpoints": {"static": [{"url": e.url, "models": ["tiny"]} for e in engines]},
            "routing": {"preset": "kv-aware", "tokenizer": {"mode": "approx"}},
        }
    )
    runtime = build_runtime(config)
    await runtime.start()
    try:
        client = openai.AsyncOpenAI(base_url=base(runtime) + "/v1", api_key="unused", max_retries=0)
        for i in range(4):
            messages = [{"role": "user", "content": f"a long shared system prompt {'x' * 300} question {i}"}]
            stream = await client.chat.completions.create(model="tiny", messages=messages, stream=True)  # type: ignore[arg-type]
            assert [c.choices[0].delta.content async for c in stream] == [" w0", " w1", " w2", " w3"]
        raw = await client.chat.completions.with_raw_response.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}]
        )
        assert "preset=kv-aware" in raw.headers["x-eksinfer-route"]
        assert all(s.inflight_requests == 0 and s.inflight_prompt_tokens == 0 for s in runtime.registry.all())
        async with httpx.AsyncClient() as http:
            text = (await http.get(base(runtime) + "/metrics")).text
        assert 'eksinfer_gateway_decisions_total{preset="kv-aware"' in text
        assert "eksinfer_gateway_router_predicted_hit_ratio" in text
        samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        # 4 streams of 4 SSE events (no usage: one token per event) + one answer whose usage says 4
        assert samples["eksinfer_gateway_generation_tokens_total"] == 20
        prompt = samples["eksinfer_gateway_prompt_tokens_total"]
        assert prompt > 0
        # the shared 300-character prefix is predicted cached from the second request on
        assert 0 < samples["eksinfer_gateway_prompt_tokens_predicted_cached_total"] < prompt
        assert samples["eksinfer_gateway_scheduling_duration_seconds_count"] == 5
        await client.close()
    finally:
        await runtime.stop()


async def test_no_healthy_endpoint_is_503(engines: list[FakeEngine]) -> None:
    runtime = await start_gateway(engines, scrape_failures=1)
    try:
        for engine in engines:
            await engine.stop()
        await until(lambda: not any(s.healthy for s in runtime.registry.all()), what="engines seen gone")
        async with httpx.AsyncClient() as client:
            r = await client.post(base(runtime) + "/v1/completions", json={"model": "tiny", "prompt": "x"})
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "no_endpoint"
            assert (await client.get(base(runtime) + "/ready")).status_code == 503
            assert [m["id"] for m in (await client.get(base(runtime) + "/v1/models")).json()["data"]] == [
                "tiny"
            ]
    finally:
        await runtime.stop()


async def test_router_bug_gives_an_openai_500(engines: list[FakeEngine]) -> None:
    runtime = await start_gateway(engines)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    runtime.router.route = broken  # type: ignore[method-assign]
    try:
        async with httpx.AsyncClient() as client:
            r = await client.post(base(runtime) + "/v1/completions", json={"model": "tiny", "prompt": "x"})
        assert r.status_code == 500
        assert r.json()["error"]["code"] == "internal_error"
        assert "Traceback" not in r.text
    finally:
        await runtime.stop()


async def test_route_headers_are_off_unless_switched_on(engines: list[FakeEngine]) -> None:
    """They name engine pod addresses: a gateway facing outside clients must not send them by default."""
    runtime = await start_gateway(engines, route_headers=False)
    try:
        async with httpx.AsyncClient() as client:
            r = await client.post(base(runtime) + "/v1/completions", json={"model": "tiny", "prompt": "x"})
        assert r.status_code == 200
        assert "x-eksinfer-endpoint" not in r.headers
        assert "x-eksinfer-route" not in r.headers
    finally:
        await runtime.stop()
    assert parse_config({}).server.route_headers is False


@pytest.mark.parametrize(("drain_s", "finishes"), [(30.0, True), (0.05, False)])
async def test_stop_drains_streams_in_flight_for_drain_timeout(
    engines: list[FakeEngine], drain_s: float, finishes: bool
) -> None:
    """SIGTERM (runtime.stop) closes the port but lets open streams finish for up to drain_timeout_s; a
    stream still open after that is cut and the engine sees the cancellation. The engine sends each chunk
    only when the test steps it, so the stream is in flight exactly as long as the test says."""
    step = asyncio.Event()
    for engine in engines:
        engine.behaviour = EngineBehaviour(tokens=4, step=step)
    runtime = await start_gateway(engines, drain_timeout_s=drain_s)
    chunks: list[str] = []

    async def read() -> None:
        body = {"model": "tiny", "prompt": "x", "stream": True}
        with contextlib.suppress(httpx.HTTPError):
            async with (
                httpx.AsyncClient() as client,
                client.stream("POST", base(runtime) + "/v1/completions", json=body) as resp,
            ):
                async for line in resp.aiter_lines():
                    if line.startswith("data:") and line != "data: [DONE]":
                        chunks.append(line)

    reader = asyncio.create_task(read())
    await until(lambda: len(chunks) == 1, what="first chunk through the gateway")
    stopping = asyncio.create_task(runtime.stop())
    if finishes:
        for _ in range(3):  # the engine holds each remaining chunk until stepped
            step.set()
            await until(lambda: not step.is_set(), what="engine sent the next chunk")
        await reader
        await stopping
        assert len(chunks) == 4
        assert (sum(e.completed for e in engines), sum(e.cancelled for e in engines)) == (1, 0)
    else:
        await stopping  # returns although the engine still holds the stream: the drain time is over
        await reader
        await until(lambda: sum(e.cancelled for e in engines) == 1, what="engine sees the cut stream")
        assert len(chunks) == 1
        assert sum(e.completed for e in engines) == 0
