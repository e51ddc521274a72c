"""The cascade and the resilience layer end to end on 127.0.0.1: real clients (httpx, the openai SDK) ->
gateway -> fake vLLM-shaped engines (no GPU here) in one or several pools. Each test injects the fault it
is about and asserts what the client saw, which engines were asked, and the counts the gateway exported."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eksinfer.errors import EksinferError
from eksinfer.gateway.config import ModelRoute, VllmPoolConfig, parse_config
from eksinfer.gateway.http import RequestRefused
from eksinfer.gateway.proxy import POOL_HEADER
from eksinfer.gateway.resilience.breaker import BreakerState
from eksinfer.gateway.resilience.cascade import Cascade
from eksinfer.gateway.resilience.layer import Resilience
from eksinfer.gateway.runtime import GatewayRuntime, build_runtime
from tests.gateway.test_proxy_fakes import EngineBehaviour, FakeEngine, RoundRobinRouter
from tests.waiting import DEADLINE_S, FakeClock, until

pytestmark = pytest.mark.timeout(60)
CHAT = [{"role": "user", "content": "hi"}]
FAST_RETRIES = {"backoff_base_s": 0, "backoff_max_s": 0}


def gateway_config(
    pools_of: dict[str, list[FakeEngine]], *, server: dict[str, Any] | None = None, **sections: Any
) -> Any:
    static = [{"url": e.url, "pool": pool} for pool, engines in pools_of.items() for e in engines]
    resilience = {
        "health_checks": {"enabled": False},
        "slow_start_s": 0,
        "retries": FAST_RETRIES,
        "stall_after_s": 0,
    }
    for key, value in sections.pop("resilience", {}).items():
        resilience[key] = {**resilience.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, **(server or {})},
            "endpoints": {"static": static},
            "scrape": {"interval_s": 0.05, "stale_after_s": 1.0, "unhealthy_after_failures": 1000},
            "resilience": resilience,
            **sections,
        }
    )


async def start(config: Any, resilience: Resilience | None = None) -> GatewayRuntime:
    runtime = build_runtime(config, router=RoundRobinRouter(), resilience=resilience)
    await runtime.start()
    await until(lambda: all(s.models for s in runtime.registry.all()), what="engines' models scraped")
    return runtime


def url(runtime: GatewayRuntime, path: str = "/v1/chat/completions") -> str:
    return f"http://127.0.0.1:{runtime.port}{path}"


async def metrics(runtime: GatewayRuntime) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as client:
        text = (await client.get(url(runtime, "/metrics"))).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in found.items() if n == name and labels.items() <= dict(lab).items())


def events(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


@pytest.fixture
async def engines() -> AsyncIterator[list[FakeEngine]]:
    started = [await FakeEngine().start() for _ in range(3)]
    yield started
    for engine in started:
        await engine.stop()


def assert_nothing_in_flight(runtime: GatewayRuntime) -> None:
    assert [s.inflight_requests for s in runtime.registry.all()] == [0] * len(runtime.registry.all())
    assert runtime.resilience.budget.active_requests == 0
    assert runtime.resilience.budget.active_retries == 0


# --- retries inside a pool ------------------------------------------------------------------------------
async def test_retryable_status_is_retried_elsewhere_and_the_endpoint_ejected(
    engines: list[FakeEngine],
) -> None:
    bad, good = engines[0], engines[1]
    bad.behaviour = EngineBehaviour(fail_status=500)
    runtime = await start(gateway_config({"default": [bad, good]}))
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(6):
                r = await client.post(url(runtime), json={"model": "tiny", "messages": CHAT})
                assert r.status_code == 200
                assert r.headers[POOL_HEADER] == "default"
        assert (bad.requests, good.requests) == (3, 6)  # ejected after 3 failures in a row
        assert runtime.resilience.detector.is_ejected(runtime.registry.all()[0])
        found = await metrics(runtime)
        assert sample(found, "eksinfer_gateway_attempt_failures_total", kind="status") == 3
        assert sample(found, "eksinfer_gateway_upstream_retries_total") == 3
        assert sample(found, "eksinfer_gateway_outlier_ejections_total", pool="default") == 1
        assert sample(found, "eksinfer_gateway_requests_total", status="200") == 6
        assert sample(found, "eksinfer_gateway_requests_total", status="500") == 0
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


async def test_terminal_status_goes_to_the_client_unretried(engines: list[FakeEngine]) -> None:
    engines[0].behaviour = EngineBehaviour(fail_status=400)
    engines[1].behaviour = EngineBehaviour(fail_status=400)
    runtime = await start(gateway_config({"default": engines[:2]}))
    try:
        client = openai.AsyncOpenAI(base_url=url(runtime, "/v1"), api_key="k", max_retries=0)
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="tiny", messages=CHAT)  # type: ignore[arg-type]
        await client.close()
        assert engines[0].requests + engines[1].requests == 1
        assert not runtime.resilience.detector.is_ejected(runtime.registry.all()[0])
    finally:
        await runtime.stop()


async def test_every_endpoint_failing_returns_the_engines_last_error(engines: list[FakeEngine]) -> None:
    for engine in engines[:2]:
        engine.behaviour = EngineBehaviour(fail_status=503)
    runtime = await start(gateway_config({"default": engines[:2]}))
    try:
        async with httpx.AsyncClient() as client:
            r = await client.post(url(runtime), json={"model": "tiny", "messages": CHAT})
        assert r.status_code == 503
        assert r.json()["error"]["message"] == "injected"  # the engine's own body
        assert (engines[0].requests, engines[1].requests) == (1, 1)
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


async def test_stalled_engine_times_out_is_retried_unseen_and_ejected_though_it_scrapes_well(
    engines: list[FakeEngine],
) -> None:
    stalled, good = engines[0], engines[1]
    stalled.behaviour = EngineBehaviour(hang=True)  # accepts, never answers; /metrics still fine
    runtime = await start(gateway_config({"default": [stalled, good]}, server={"first_token_timeout_s": 0.3}))
    try:
        async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
            for _ in range(5):
                body = {"model": "tiny", "messages": CHAT, "stream": True}
                r = await client.post(url(runtime), json=body)
                assert r.status_code == 200
                assert events(r.text)[-1] == "[DONE]"
        assert stalled.requests == 3
        await until(lambda: stalled.cancelled == 3, what="timed-out attempts cancelled upstream")
        state = runtime.registry.all()[0]
        scraped = state.scraped_at
        await until(lambda: state.scraped_at != scraped, what="a good scrape after the ejection")
        assert state.healthy
        assert runtime.resilience.detector.is_ejected(state)  # the scrape did not undo it
        found = await metrics(runtime)
        assert sample(found, "eksinfer_gateway_attempt_failures_total", kind="first_token_timeout") == 3
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


async def test_an_ejected_engine_that_answers_a_probe_request_is_readmitted_before_its_time(
    engines: list[FakeEngine],
) -> None:
    """A stalled engine answers /health, so only a real request can show it recovered: while it is ejected
    each passing check sends it one; a stalled engine fails it and stays out, a recovered one is readmitted
    although its ejection time (here on a clock that never moves) has not passed."""
    stalled, good = engines[0], engines[1]
    stalled.behaviour = EngineBehaviour(hang=True)
    config = gateway_config(
        {"default": [stalled, good]},
        server={"first_token_timeout_s": 0.3},
        resilience={"health_checks": {"enabled": True, "interval_s": 0.05, "timeout_s": 0.3}},
    )
    res = Resilience(config.resilience, Cascade(config.pools, config.models), clock=FakeClock())
    runtime = await start(config, res)
    state = runtime.registry.all()[0]
    try:
        async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
            body = {"model": "tiny", "messages": CHAT, "stream": True}
            for _ in range(3):
                assert (await client.post(url(runtime), json=body)).status_code == 200
            assert res.detector.is_ejected(state)
            sent = stalled.requests
            await until(lambda: stalled.requests >= sent + 2, what="probes of the ejected engine")
            assert res.detector.is_ejected(state)  # the stalled engine did not answer them
            assert [b.get("max_tokens") for b in stalled.bodies[sent:]][:2] == [1, 1]
            stalled.behaviour = EngineBehaviour()
            await until(lambda: not res.detector.is_ejected(state), what="a probe answered")
            served = stalled.completed
            for _ in range(2):
                assert (await client.post(url(runtime), json=body)).status_code == 200
            assert stalled.completed > served  # back in rotation
    finally:
        await runtime.stop()


async def test_opening_event_then_break_is_retried_unseen(engines: list[FakeEngine]) -> None:
    # vLLM writes the role event before the first token; a break right after it is before the commit point.
    engines[0].behaviour = EngineBehaviour(role_event=True, break_after=0)
    engines[1].behaviour = EngineBehaviour(role_event=True, tokens=3)
    runtime = await start(gateway_config({"default": engines[:2]}))
    try:
        client = openai.AsyncOpenAI(base_url=url(runtime, "/v1"), api_key="k", max_retries=0)
        stream = await client.chat.completions.create(model="tiny", messages=CHAT, stream=True)  # type: ignore[arg-type]
        chunks = [c async for c in stream]
        await client.close()
        assert [c.choices[0].delta.role for c in chunks].count("assistant") == 1
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == " w0 w1 w2"
        assert engines[0].requests == 1
    finally:
        await runtime.stop()


# --- the cascade ----------------------------------------------------------------------------------------
async def test_cascade_order_and_which_pool_answered(engines: list[FakeEngine]) -> None:
    onprem, eks = engines[0], engines[1]
    config = gateway_config(
        {"onprem": [onprem], "eks": [eks]}, models={"tiny": {"cascade": ["onprem", "eks"]}}
    )
    runtime = await start(config)
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(3):
                r = await client.post(url(runtime), json={"model": "tiny", "messages": CHAT})
                assert r.headers[POOL_HEADER] == "onprem"
            assert (onprem.requests, eks.requests) == (3, 0)
            onprem.behaviour = EngineBehaviour(fail_status=503)
            r = await client.post(url(runtime), json={"model": "tiny", "messages": CHAT})
            assert r.status_code == 200
            assert r.headers[POOL_HEADER] == "eks"
            assert "x-eksinfer-endpoint" not in r.headers  # pod addresses only with server.route_headers
        found = await metrics(runtime)
        assert sample(found, "eksinfer_gateway_requests_total", pool="eks", status="200") == 1
        assert sample(found, "eksinfer_gateway_requests_total", pool="onprem", status="200") == 3
        assert (
            sample(found, "eksinfer_gateway_fallbacks_total", pool="onprem", reason="attempts_exhausted") == 1
        )
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


async def start_failing_onprem(
    engines: list[FakeEngine],
) -> tuple[Resilience, FakeClock, GatewayRuntime]:
    """A cascade [onprem, eks] whose two onprem engines answer 503: its breaker opens after 2 failures, for
    30 s of a fake clock; ejection stays out of the way (50 failures in a row)."""
    a1, a2, eks = engines
    for engine in (a1, a2):
        engine.behaviour = EngineBehaviour(fail_status=503)
    config = gateway_config(
        {"onprem": [a1, a2], "eks": [eks]},
        models={"tiny": {"cascade": ["onprem", "eks"]}},
        resilience={"breaker": {"min_failures": 2, "open_s": 30}, "outlier": {"consecutive_failures": 50}},
    )
    clock = FakeClock()
    res = Resilience(config.resilience, Cascade(config.pools, config.models), clock=clock)
    return res, clock, await start(config, res)


async def test_circuit_opens_skips_the_pool_and_closes_after_a_good_trial(engines: list[FakeEngine]) -> None:
    a1, a2, _ = engines
    res, clock, runtime = await start_failing_onprem(engines)
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(3):
                r = await client.post(url(runtime), json={"model": "tiny", "messages": CHAT})
                assert r.headers[POOL_HEADER] == "eks"
            assert (a1.requests, a2.requests) == (1, 1)  # opened by the first request, then skipped
            assert res.breaker("onprem").state is BreakerState.OPEN
            found = await metrics(runtime)
            assert sample(found, "eksinfer_gateway_circuit_state", pool="onprem") == 2
            assert sample(found, "eksinfer_gateway_fallbacks_total", reason="circuit_open") == 3
            for engine in (a1, a2):
                engine.behaviour = EngineBehaviour()
            clock.advance(30)
            r = await client.post(url(runtime), json={"model": "tiny", "messages": CHAT})
            assert r.headers[POOL_HEADER] == "onprem"  # the trial
            assert res.breaker("onprem").state is BreakerState.CLOSED
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


async def test_a_half_open_pool_takes_requests_again_once_its_trial_answers(
    engines: list[FakeEngine],
) -> None:
    """The trial closes the circuit at its first byte: while it still streams, the next request goes to the
    pool, not to the next tier (judged at the end of the stream, a half-open pool took one request for the
    length of a whole answer)."""
    a1, a2, _ = engines
    res, clock, runtime = await start_failing_onprem(engines)
    step = asyncio.Event()
    try:
        async with httpx.AsyncClient() as client:
            r = await client.post(url(runtime), json={"model": "tiny", "messages": CHAT})
            assert r.headers[POOL_HEADER] == "eks"
            assert res.breaker("onprem").state is BreakerState.OPEN
            for engine in (a1, a2):
                engine.behaviour = EngineBehaviour(step=step)  # streams one chunk, then waits for the test
            clock.advance(30)
            body = {"model": "tiny", "messages": CHAT, "stream": True}
            async with client.stream("POST", url(runtime), json=body) as trial:
                assert trial.headers[POOL_HEADER] == "onprem"
                lines = trial.aiter_lines()  # one iterator, kept: a dropped one closes the stream
                assert (await anext(lines)).startswith("data: ")  # its first chunk: the pool answers again
                assert res.breaker("onprem").state is BreakerState.CLOSED
                r = await client.post(url(runtime), json={"model": "tiny", "messages": CHAT})
                assert r.headers[POOL_HEADER] == "onprem"  # not passed over while the trial streams
                for _ in range(3):
                    step.set()
                    await until(lambda: not step.is_set(), what="the trial's next chunk")
                rest = [line async for line in lines]
            assert "data: [DONE]" in rest
        found = await metrics(runtime)
        assert sample(found, "eksinfer_gateway_fallbacks_total", reason="circuit_open") == 1  # the first only
        assert_nothing_in_flight(runtime)
    finally:
        step.set()
        await runtime.stop()


async def test_saturated_pool_sheds_but_the_last_tier_never_does(engines: list[FakeEngine]) -> None:
    onprem, eks = engines[0], engines[1]
    onprem.behaviour = EngineBehaviour(waiting=9)
    config = gateway_config(
        {"onprem": [onprem], "eks": [eks]},
        pools={"onprem": {"max_waiting": 4}, "eks": {"max_waiting": 4}},
        models={"tiny": {"cascade": ["onprem", "eks"]}},
    )
    runtime = await start(config)
    try:
        await until(lambda: runtime.registry.all()[0].num_waiting == 9, what="queue depth scraped")
        eks.behaviour = EngineBehaviour(waiting=9)
        await until(lambda: runtime.registry.all()[1].num_waiting == 9, what="queue depth scraped")
        async with httpx.AsyncClient() as client:
            r = await client.post(url(runtime), json={"model": "tiny", "messages": CHAT})
        assert r.headers[POOL_HEADER] == "eks"
        assert onprem.requests == 0
        found = await metrics(runtime)
        assert sample(found, "eksinfer_gateway_fallbacks_total", pool="onprem", reason="shed_saturated") == 1
    finally:
        await runtime.stop()


async def test_a_prompt_too_long_for_a_pool_goes_to_a_larger_one(engines: list[FakeEngine]) -> None:
    small, large = engines[0], engines[1]
    config = gateway_config(
        {"small": [small], "large": [large]},
        pools={"small": {"max_context_tokens": 200}, "large": {"max_context_tokens": 5000}},
        models={"tiny": {"cascade": ["small", "large"]}},
    )
    runtime = await start(config)
    try:
        async with httpx.AsyncClient() as client:
            short = await client.post(
                url(runtime), json={"model": "tiny", "messages": CHAT, "max_tokens": 16}
            )
            long = [{"role": "user", "content": "x" * 2000}]
            longer = await client.post(
                url(runtime), json={"model": "tiny", "messages": long, "max_tokens": 16}
            )
            huge = [{"role": "user", "content": "x" * 40000}]
            refused = await client.post(url(runtime), json={"model": "tiny", "messages": huge})
        assert (short.headers[POOL_HEADER], longer.headers[POOL_HEADER]) == ("small", "large")
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "context_length_exceeded"
        assert (small.requests, large.requests) == (1, 1)
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


async def test_spent_retry_budget_sends_the_request_to_the_next_tier(engines: list[FakeEngine]) -> None:
    a1, a2, eks = engines
    a1.behaviour = EngineBehaviour(fail_status=500)
    config = gateway_config(
        {"onprem": [a1, a2], "eks": [eks]},
        models={"tiny": {"cascade": ["onprem", "eks"]}},
        resilience={"budget": {"percent": 0, "min_retries": 0}},
    )
    runtime = await start(config)
    try:
        async with httpx.AsyncClient() as client:
            r = await client.post(url(runtime), json={"model": "tiny", "messages": CHAT})
        assert r.headers[POOL_HEADER] == "eks"
        assert (a1.requests, a2.requests, eks.requests) == (1, 0, 1)
        found = await metrics(runtime)
        assert sample(found, "eksinfer_gateway_retry_budget_denied_total") == 1
        assert sample(found, "eksinfer_gateway_fallbacks_total", reason="retry_budget") == 1
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


async def test_a_retry_away_from_an_ejected_endpoint_needs_no_budget(engines: list[FakeEngine]) -> None:
    a1, a2 = engines[0], engines[1]
    a1.behaviour = EngineBehaviour(fail_status=500)
    config = gateway_config(
        {"onprem": [a1, a2]},
        resilience={"budget": {"percent": 0, "min_retries": 0}, "outlier": {"consecutive_failures": 1}},
    )
    runtime = await start(config)
    try:
        async with httpx.AsyncClient() as client:
            r = await client.post(url(runtime), json={"model": "tiny", "messages": CHAT})
        assert r.status_code == 200  # a1 failed and was ejected at once: moving away from it is free
        assert (a1.requests, a2.requests) == (1, 1)
        found = await metrics(runtime)
        assert sample(found, "eksinfer_gateway_retry_budget_denied_total") == 0
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


# --- streams after the commit point -----------------------------------------------------------------------
async def test_broken_stream_ends_with_an_error_event_never_a_done(engines: list[FakeEngine]) -> None:
    engines[0].behaviour = EngineBehaviour(tokens=5, break_after=2, role_event=True)
    runtime = await start(gateway_config({"default": engines[:1]}))
    try:
        async with httpx.AsyncClient() as client:
            r = await client.post(url(runtime), json={"model": "tiny", "messages": CHAT, "stream": True})
        sent = events(r.text)
        assert "[DONE]" not in sent
        assert json.loads(sent[-1])["error"]["code"] == "upstream_broken"
        assert len(sent) == 4  # opening, two tokens, the error
        found = await metrics(runtime)
        assert sample(found, "eksinfer_gateway_stream_breaks_total", action="error_event") == 1
        assert sample(found, "eksinfer_gateway_attempt_failures_total", kind="broken") == 1
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


async def test_stream_continues_on_the_next_tier_as_one_stream(engines: list[FakeEngine]) -> None:
    onprem, eks = engines[0], engines[1]
    onprem.behaviour = EngineBehaviour(tokens=5, break_after=2, role_event=True)
    eks.behaviour = EngineBehaviour(tokens=3, role_event=True)
    config = gateway_config(
        {"onprem": [onprem], "eks": [eks]},
        models={"tiny": {"cascade": ["onprem", "eks"], "continue_streams": True}},
    )
    runtime = await start(config)
    try:
        client = openai.AsyncOpenAI(base_url=url(runtime, "/v1"), api_key="k", max_retries=0)
        stream = await client.chat.completions.create(
            model="tiny",
            messages=CHAT,  # type: ignore[arg-type]
            stream=True,
            max_tokens=10,
        )
        chunks = [c async for c in stream]
        await client.close()
        assert [c.choices[0].delta.role for c in chunks].count("assistant") == 1
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == " w0 w1" + " w0 w1 w2"
        continued = eks.bodies[-1]
        assert continued["messages"] == [*CHAT, {"role": "assistant", "content": " w0 w1"}]
        assert continued["continue_final_message"] is True
        assert continued["add_generation_prompt"] is False
        assert continued["max_tokens"] == 8
        found = await metrics(runtime)
        assert sample(found, "eksinfer_gateway_stream_breaks_total", action="continued") == 1
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


# --- health checks --------------------------------------------------------------------------------------
async def test_active_health_checks_take_an_endpoint_out_and_back(engines: list[FakeEngine]) -> None:
    sick, good = engines[0], engines[1]
    config = gateway_config(
        {"default": [sick, good]},
        resilience={"health_checks": {"enabled": True, "interval_s": 0.05, "unhealthy_after": 2}},
    )
    runtime = await start(config)
    state = runtime.registry.all()[0]
    try:
        sick.behaviour = EngineBehaviour(health_status=503)
        await until(lambda: runtime.resilience.detector.is_down(state), what="failed checks seen")
        async with httpx.AsyncClient() as client:
            for _ in range(4):
                await client.post(url(runtime), json={"model": "tiny", "messages": CHAT})
            assert sick.requests == 0
            sick.behaviour = EngineBehaviour()
            await until(lambda: not runtime.resilience.detector.is_down(state), what="good check seen")
            for _ in range(4):
                await client.post(url(runtime), json={"model": "tiny", "messages": CHAT})
        assert sick.requests == 2
    finally:
        await runtime.stop()


async def test_a_pool_whose_engines_pass_their_checks_again_gets_its_trial_before_open_s(
    engines: list[FakeEngine],
) -> None:
    """After an outage the circuit's open_s (here 300 s on a clock that never moves) must not keep a pool
    whose engines are back behind a slower tier: their passing health checks let the trial through."""
    a1, a2, eks = engines
    for engine in (a1, a2):
        engine.behaviour = EngineBehaviour(fail_status=503)
    config = gateway_config(
        {"onprem": [a1, a2], "eks": [eks]},
        models={"tiny": {"cascade": ["onprem", "eks"]}},
        resilience={
            "breaker": {"min_failures": 2, "open_s": 300},
            "outlier": {"consecutive_failures": 50},
            "health_checks": {"enabled": True, "interval_s": 0.05, "unhealthy_after": 1},
        },
    )
    res = Resilience(config.resilience, Cascade(config.pools, config.models), clock=FakeClock())
    runtime = await start(config, res)
    try:
        onprem = [s for s in runtime.registry.all() if s.pool == "onprem"]
        async with httpx.AsyncClient() as client:
            r = await client.post(url(runtime), json={"model": "tiny", "messages": CHAT})
            assert r.headers[POOL_HEADER] == "eks"
            assert res.breaker("onprem").state is BreakerState.OPEN  # both onprem attempts failed
            for engine in (a1, a2):
                engine.behaviour = EngineBehaviour(fail_status=503, health_status=503)  # the outage
            await until(lambda: all(res.detector.is_down(s) for s in onprem), what="failed checks seen")
            for engine in (a1, a2):
                engine.behaviour = EngineBehaviour()
            await until(lambda: not any(res.detector.is_down(s) for s in onprem), what="checks pass again")
            r = await client.post(url(runtime), json={"model": "tiny", "messages": CHAT})
            assert r.headers[POOL_HEADER] == "onprem"  # the trial, 300 s early
            assert res.breaker("onprem").state is BreakerState.CLOSED
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


# --- a managed API as the last tier (a fake client until the Bedrock pool kind is built) --------------------
class FakeManagedError(EksinferError):
    """Shaped like the Bedrock client's errors (CONTRACTS: status, code, retryable)."""

    def __init__(self, status: int, code: str, retryable: bool) -> None:
        super().__init__(f"{code} from the managed API")
        self.status, self.code, self.retryable = status, code, retryable


@dataclass
class FakeManaged:
    """Stands in for `eksinfer.gateway.bedrock.client.BedrockClient` (OpenAI dicts in and out)."""

    fail: list[Exception] = field(default_factory=list)  # raised by the next calls, in order
    calls: list[dict[str, Any]] = field(default_factory=list)

    async def complete(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        self.calls.append(body)
        if self.fail:
            raise self.fail.pop(0)
        message = {"role": "assistant", "content": "from bedrock"}
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        return {
            "id": "b",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage,
        }

    async def stream(self, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        self.calls.append(body)
        if self.fail:
            raise self.fail.pop(0)
        base = {"id": "b", "object": "chat.completion.chunk", "model": model}
        yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
        for word in ("from", " bedrock"):
            yield {**base, "choices": [{"index": 0, "delta": {"content": word}}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


@dataclass(frozen=True)
class FakeBedrockPool:
    kind: str = "bedrock"
    models: dict[str, str] = field(default_factory=lambda: {"tiny": "us.meta.tiny-v1:0"})


async def start_with_managed(engines: list[FakeEngine], managed: FakeManaged) -> GatewayRuntime:
    config = gateway_config({"eks": engines})
    pools = {"eks": VllmPoolConfig(), "bedrock": FakeBedrockPool()}
    models = {"tiny": ModelRoute(cascade=["eks", "bedrock"])}
    res = Resilience(config.resilience, Cascade(pools, models), managed={"bedrock": managed})
    return await start(config, res)


async def test_managed_tier_answers_when_the_pool_is_down(engines: list[FakeEngine]) -> None:
    engines[0].behaviour = EngineBehaviour(fail_status=503)
    managed = FakeManaged(fail=[FakeManagedError(429, "ThrottlingException", True)])
    runtime = await start_with_managed(engines[:1], managed)
    try:
        async with httpx.AsyncClient() as client:
            r = await client.post(url(runtime), json={"model": "tiny", "messages": CHAT})
            assert r.status_code == 200
            assert r.headers[POOL_HEADER] == "bedrock"
            assert r.json()["choices"][0]["message"]["content"] == "from bedrock"
            assert len(managed.calls) == 2  # throttled once, retried
            cli = openai.AsyncOpenAI(base_url=url(runtime, "/v1"), api_key="k", max_retries=0)
            stream = await cli.chat.completions.create(model="tiny", messages=CHAT, stream=True)  # type: ignore[arg-type]
            chunks = [c async for c in stream]
            await cli.close()
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "from bedrock"
            models = (await client.get(url(runtime, "/v1/models"))).json()["data"]
            assert [m["id"] for m in models] == ["tiny"]
        found = await metrics(runtime)
        assert sample(found, "eksinfer_gateway_requests_total", pool="bedrock", status="200") == 2
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


async def test_managed_tier_terminal_error_reaches_the_client(engines: list[FakeEngine]) -> None:
    engines[0].behaviour = EngineBehaviour(fail_status=503)
    managed = FakeManaged(fail=[RequestRefused(400, "n > 1 is not supported", "unsupported", param="n")])
    runtime = await start_with_managed(engines[:1], managed)
    try:
        async with httpx.AsyncClient() as client:
            r = await client.post(url(runtime), json={"model": "tiny", "messages": CHAT, "n": 2})
        assert r.status_code == 400
        assert r.json()["error"]["message"] == "n > 1 is not supported"
        assert len(managed.calls) == 1
    finally:
        await runtime.stop()


async def test_no_request_hangs_when_everything_is_down(engines: list[FakeEngine]) -> None:
    for engine in engines[:2]:
        engine.behaviour = EngineBehaviour(hang=True)
    runtime = await start(gateway_config({"default": engines[:2]}, server={"first_token_timeout_s": 0.2}))
    try:
        async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
            answers = await asyncio.gather(
                *(client.post(url(runtime), json={"model": "tiny", "messages": CHAT}) for _ in range(4))
            )
        assert sorted(r.status_code for r in answers) in (
            [504] * 4,
            [503, 504, 504, 504],
            [503, 503, 504, 504],
        )
        assert {r.json()["error"]["code"] for r in answers} <= {"upstream_timeout", "no_endpoint"}
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()


async def test_the_watchdog_retries_a_stalled_engines_requests_long_before_their_timeout(
    engines: list[FakeEngine],
) -> None:
    stalled, busy = engines[0], engines[1]
    stalled.behaviour = EngineBehaviour(hang=True)
    config = gateway_config(
        {"default": [stalled, busy]},
        server={"first_token_timeout_s": DEADLINE_S * 3},  # beyond the test's own deadline: never the cause
        resilience={"stall_after_s": 0.3},
    )
    runtime = await start(config)
    try:
        async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
            # Streamed: a non-streamed wait never convicts an endpoint (no byte comes until its answer ends).
            body = {"model": "tiny", "messages": CHAT, "stream": True}
            r = await client.post(url(runtime), json=body)
            assert r.status_code == 200  # its first attempt hung on the stalled engine
            assert r.text.rstrip().endswith("data: [DONE]")
        assert stalled.requests == 1
        assert runtime.resilience.detector.is_ejected(runtime.registry.all()[0])
        found = await metrics(runtime)
        assert sample(found, "eksinfer_gateway_stalls_total") == 1
        assert sample(found, "eksinfer_gateway_attempt_failures_total", kind="first_token_timeout") == 1
        assert busy.requests == 1
        assert_nothing_in_flight(runtime)
    finally:
        await runtime.stop()
