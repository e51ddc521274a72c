"""vLLM's own in-band error event (`data: {"error": ...}` then its `[DONE]`) through the real gateway: real
clients (httpx, the openai SDK) -> gateway -> fake vLLM-shaped engines, and simulated engines whose engine
loop is stopped mid-stream (the simulator then writes that event, as vLLM does). No GPU runs here, hence the
fakes. A 5xx event is a break (counted, retried unseen or continued), a 4xx one the request's own answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from eksinfer.gateway.config import parse_config
from eksinfer.gateway.runtime import build_runtime
from eksinfer.sim.cluster import SimCluster
from tests.gateway.test_cascade import (
    CHAT,
    assert_nothing_in_flight,
    events,
    gateway_config,
    metrics,
    sample,
    start,
    url,
)
from tests.gateway.test_proxy_fakes import EngineBehaviour, FakeEngine
from tests.sim.conftest import StartCluster, set_slow_token_s
from tests.sim.conftest import start as start_sim  # noqa: F401 - the fixture
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)
STREAM = {"model": "tiny", "messages": CHAT, "stream": True}


@pytest.fixture
async def engines() -> AsyncIterator[list[FakeEngine]]:
    started = [await FakeEngine().start() for _ in range(2)]
    yield started
    for engine in started:
        await engine.stop()


async def test_error_event_without_continuation_ends_with_the_engines_event_and_no_done(
    engines: list[FakeEngine],
) -> None:
    engines[0].behaviour = EngineBehaviour(tokens=5, error_after=2, role_event=True)
    runtime = await start(gateway_config({"default": engines[:1]}))
    state = runtime.registry.all()[0]
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(3):
                r = await client.post(url(runtime), json=STREAM)
                sent = events(r.text)
                assert "[DONE]" not in sent  # vLLM's own [DONE] after its error is not relayed
                errors = [json.loads(e)["error"] for e in sent if '"error"' in e]
                assert len(errors) == 1
                assert sent[-1].startswith('{"error"')
                assert errors[0]["message"] == "engine failed"
                assert errors[0]["code"] == 500
                assert len(sent) == 4  # opening, two tokens, the error
        found = await metrics(runtime)
        assert sample(found, "eksinfer_gateway_attempt_failures_total", kind="error_event") == 3
        assert sample(found, "eksinfer_gateway_stream_breaks_total", action="error_event") == 3
        assert runtime.resilience.detector.is_ejected(state)  # three failures in a row, like a broken stream
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


async def test_error_event_continues_on_the_next_tier_as_one_stream(engines: list[FakeEngine]) -> None:
    onprem, eks = engines
    onprem.behaviour = EngineBehaviour(tokens=5, error_after=2, role_event=True)
    eks.behaviour = EngineBehaviour(tokens=3, role_event=True)
    config = gateway_config(
        {"onprem": [onprem], "eks": [eks]},
        models={"tiny": {"cascade": ["onprem", "eks"], "continue_streams": True}},
    )
    runtime = await start(config)
    try:
        sdk = openai.AsyncOpenAI(base_url=url(runtime, "/v1"), api_key="k", max_retries=0)
        stream = await sdk.chat.completions.create(
            model="tiny",
            messages=CHAT,  # type: ignore[arg-type]
            stream=True,
            max_tokens=10,
        )
        chunks = [c async for c in stream]  # the SDK raises on an error event: none reached it
        await sdk.close()
        assert [c.choices[0].delta.role for c in chunks].count("assistant") == 1
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == " w0 w1" + " w0 w1 w2"
        continued = eks.bodies[-1]
        assert continued["messages"] == [*CHAT, {"role": "assistant", "content": " w0 w1"}]
        assert continued["continue_final_message"] is True
        assert continued["max_tokens"] == 8
        found = await metrics(runtime)
        assert sample(found, "eksinfer_gateway_stream_breaks_total", action="continued") == 1
        failures = sample(found, "eksinfer_gateway_attempt_failures_total", pool="onprem", kind="error_event")
        assert failures == 1
        assert runtime.resilience.breaker("onprem").failures == 1
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


async def test_error_event_before_any_content_is_retried_unseen(engines: list[FakeEngine]) -> None:
    bad, good = engines
    bad.behaviour = EngineBehaviour(tokens=3, error_after=0, role_event=True)
    good.behaviour = EngineBehaviour(tokens=3, role_event=True)
    runtime = await start(gateway_config({"default": [bad, good]}))
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(2):  # round robin: the failing engine takes some of the first attempts
                r = await client.post(url(runtime), json=STREAM)
                sent = events(r.text)
                assert sent[-1] == "[DONE]"
                assert not any('"error"' in e for e in sent)
                assert [json.loads(e)["choices"][0]["delta"].get("role") for e in sent[:-1]].count(
                    "assistant"
                ) == 1
        assert bad.requests >= 1
        assert good.requests == 2
        found = await metrics(runtime)
        assert sample(found, "eksinfer_gateway_attempt_failures_total", kind="error_event") == bad.requests
        assert sample(found, "eksinfer_gateway_stream_breaks_total") == 0
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


async def test_every_engine_erring_before_content_answers_the_engines_error_as_json(
    engines: list[FakeEngine],
) -> None:
    for engine in engines:
        engine.behaviour = EngineBehaviour(tokens=3, error_after=0, role_event=True)
    runtime = await start(gateway_config({"default": engines}))
    try:
        sdk = openai.AsyncOpenAI(base_url=url(runtime, "/v1"), api_key="k", max_retries=0)
        with pytest.raises(openai.InternalServerError) as raised:
            await sdk.chat.completions.create(model="tiny", messages=CHAT, stream=True)  # type: ignore[arg-type]
        await sdk.close()
        assert raised.value.status_code == 500
        assert "engine failed" in str(raised.value)
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


async def test_a_4xx_error_event_is_the_requests_own_and_is_neither_counted_nor_continued(
    engines: list[FakeEngine],
) -> None:
    onprem, eks = engines
    onprem.behaviour = EngineBehaviour(tokens=5, error_after=2, error_code=400, role_event=True)
    config = gateway_config(
        {"onprem": [onprem], "eks": [eks]},
        models={"tiny": {"cascade": ["onprem", "eks"], "continue_streams": True}},
    )
    runtime = await start(config)
    try:
        async with httpx.AsyncClient() as client:
            r = await client.post(url(runtime), json=STREAM)
        sent = events(r.text)
        assert "[DONE]" not in sent
        assert json.loads(sent[-1])["error"]["code"] == 400
        assert len(sent) == 4
        assert eks.requests == 0
        found = await metrics(runtime)
        assert sample(found, "eksinfer_gateway_attempt_failures_total") == 0
        assert sample(found, "eksinfer_gateway_stream_breaks_total") == 0
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


async def test_an_error_event_split_across_reads_reaches_the_client_whole(engines: list[FakeEngine]) -> None:
    engines[0].behaviour = EngineBehaviour(tokens=5, error_after=2, role_event=True, error_split=True)
    runtime = await start(gateway_config({"default": engines[:1]}))
    try:
        async with httpx.AsyncClient() as client:
            r = await client.post(url(runtime), json=STREAM)
        assert r.text.endswith("\n\n")
        assert r.text.count("data: ") == 4
        assert json.loads(events(r.text)[-1])["error"]["code"] == 500
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


# --- simulated engines: the engine loop stops mid-stream, and the simulator's handler writes vLLM's event ---
SIM_MODEL = "llama-3.1-8b"


async def test_a_simulated_engine_failing_mid_stream_is_continued_by_the_next_tier(
    start_sim: StartCluster,  # noqa: F811 - the fixture
) -> None:
    failing, healthy = await start_sim(1), await start_sim(1)
    set_slow_token_s(failing, 0.05)  # the stream stays open while the test stops the engine
    static = [
        {"url": failing.urls[0], "pool": "onprem", "models": [SIM_MODEL]},
        {"url": healthy.urls[0], "pool": "eks", "models": [SIM_MODEL]},
    ]
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "endpoints": {"static": static},
            "routing": {"preset": "round-robin"},
            "resilience": {"health_checks": {"enabled": False}, "slow_start_s": 0, "stall_after_s": 0},
            "models": {SIM_MODEL: {"cascade": ["onprem", "eks"], "continue_streams": True}},
        }
    )
    runtime = build_runtime(config)
    await runtime.start()
    # the cascade's next tier would take a request sent before the engines' models are known
    await until(lambda: all(s.models for s in runtime.registry.all()), what="engines' models scraped")
    try:
        text = await _stream_and_stop(runtime.port, failing)
        assert text  # the continuation's text followed the first engine's
        found = await metrics(runtime)
        assert sample(found, "eksinfer_gateway_stream_breaks_total", action="continued") == 1
        assert sample(found, "eksinfer_gateway_attempt_failures_total", kind="error_event") == 1
        await until(lambda: not any(s.inflight_requests for s in runtime.registry.all()), what="released")
    finally:
        await runtime.stop()


async def _stream_and_stop(port: int | None, failing: SimCluster) -> str:
    """Streams through the gateway; after two content chunks stops the first engine's loop (requests in
    flight there end with vLLM's error event). Returns the text after the stop."""
    sdk = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
    try:
        stream = await sdk.chat.completions.create(
            model=SIM_MODEL,
            messages=[{"role": "user", "content": "tell me a story"}],
            stream=True,
            max_tokens=40,
        )
        seen, after = 0, []
        async for chunk in stream:  # raises if an error event reached the client
            piece = chunk.choices[0].delta.content if chunk.choices else None
            if piece:
                seen += 1
                if seen == 2:
                    await failing.replicas[0].engine.stop()
                elif seen > 2:
                    after.append(piece)
        return "".join(after)
    finally:
        await sdk.close()
