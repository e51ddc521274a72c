"""Stored Responses through the gateway: several simulated engines, each with its own in-memory store (as
vLLM 0.32 keeps one per serving process, VLLM_ENABLE_RESPONSES_API_STORE), the gateway's real router, and the
`openai` SDK as the client. The simulated engines stand in for vLLM (no GPU here); their store, 404 and 400
texts follow vLLM 0.32 (tests/sim/test_responses_tools.py compares them with a capture).

Round-robin routing sends consecutive requests to different engines, so without pinning most follow-ups
would land on an engine that never saw the response and get its 404.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eksinfer.gateway.apis import ResponsePins
from eksinfer.gateway.config import ServerConfig, parse_config
from eksinfer.gateway.endpoints import EndpointRegistry, EndpointSpec
from eksinfer.gateway.http import ApiKeys, RequestRefused
from eksinfer.gateway.metrics import GatewayMetrics
from eksinfer.gateway.runtime import GatewayRuntime, build_runtime
from eksinfer.gateway.scheduling.framework import EndpointId
from eksinfer.gateway.upstream import UpstreamPool
from eksinfer.sim.cluster import SimCluster
from tests.sim.conftest import StartCluster, free_port, set_slow_token_s, start  # noqa: F401 - the fixture
from tests.waiting import until

MODEL = "llama-3.1-8b"


async def gateway_for(urls: Sequence[str], **sections: Any) -> GatewayRuntime:
    pools: dict[str, str] = sections.pop("pool_of", {})
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "route_headers": True},
            "endpoints": {
                "static": [{"url": u, "models": [MODEL], "pool": pools.get(u, "default")} for u in urls]
            },
            "routing": {"preset": "round-robin"},
            **sections,
        }
    )
    runtime = build_runtime(config)
    await runtime.start()
    # round-robin over all three engines needs each engine's models known first
    await until(lambda: all(s.models for s in runtime.registry.all()), what="engines' models scraped")
    return runtime


def sdk_for(runtime: GatewayRuntime) -> openai.AsyncOpenAI:
    url = f"http://127.0.0.1:{runtime.port}/v1"
    return openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)


def lookups(runtime: GatewayRuntime) -> dict[str, float]:
    text = runtime.metrics.render().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "eksinfer_gateway_response_id_lookups_total":
                found[sample.labels["result"]] = sample.value
    return found


@pytest.fixture
async def engines(start: StartCluster) -> list[SimCluster]:  # noqa: F811
    """Three engines, each its own cluster so that one can be stopped alone."""
    return [await start(enable_responses_store=True) for _ in range(3)]


@pytest.fixture
async def stack(engines: list[SimCluster]) -> AsyncIterator[tuple[GatewayRuntime, openai.AsyncOpenAI]]:
    runtime = await gateway_for([c.urls[0] for c in engines])
    sdk = sdk_for(runtime)
    try:
        yield runtime, sdk
    finally:
        await sdk.close()
        await runtime.stop()


async def test_many_follow_ups_across_three_engines_all_succeed(
    stack: tuple[GatewayRuntime, openai.AsyncOpenAI],
) -> None:
    """Three conversations started on three engines (round-robin), each continued six times, streamed and
    not: every follow-up reaches the engine holding its conversation, which renders the whole history."""
    runtime, sdk = stack
    last: list[str] = []
    home: list[str] = []
    for i in range(3):
        raw = await sdk.responses.with_raw_response.create(
            model=MODEL, input=f"conversation {i}", max_output_tokens=4
        )
        last.append(raw.parse().id)
        home.append(raw.headers["x-eksinfer-endpoint"])
    assert len(set(home)) == 3  # round-robin spread them: each conversation lives on its own engine
    for turn in range(6):
        for i in range(3):
            if turn % 2:
                stream = await sdk.responses.create(
                    model=MODEL,
                    input=f"turn {turn}",
                    previous_response_id=last[i],
                    stream=True,
                    max_output_tokens=4,
                )
                events = [event async for event in stream]
                assert events[-1].type == "response.completed"
                done = events[-1].response  # type: ignore[union-attr]
                assert done.previous_response_id == last[i]
                last[i] = done.id
            else:
                raw = await sdk.responses.with_raw_response.create(
                    model=MODEL, input=f"turn {turn}", previous_response_id=last[i], max_output_tokens=4
                )
                assert raw.headers["x-eksinfer-endpoint"] == home[i]
                answer = raw.parse()
                assert answer.previous_response_id == last[i]
                assert answer.usage is not None
                last[i] = answer.id
    assert lookups(runtime)["hit"] == 18
    assert lookups(runtime)["probe_hit"] == 0
    # the history grew on the engine: the last answer's prompt holds all seven user turns
    retrieved = [await sdk.responses.retrieve(rid) for rid in last]
    assert all(r.usage is not None and r.usage.input_tokens > 7 * 2 for r in retrieved)


async def test_get_cancel_and_unknown_ids(stack: tuple[GatewayRuntime, openai.AsyncOpenAI]) -> None:
    runtime, sdk = stack
    made = [
        await sdk.responses.create(model=MODEL, input=f"hello {i}", max_output_tokens=3) for i in range(3)
    ]
    for answer in made:
        got = await sdk.responses.retrieve(answer.id)
        assert (got.id, got.output_text) == (answer.id, answer.output_text)
        with pytest.raises(openai.BadRequestError) as refused:  # the engine's own answer: it was found
            await sdk.responses.cancel(answer.id)
        assert "Cannot cancel a synchronous response." in str(refused.value)
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.responses.retrieve("resp_doesnotexist")
    assert "Response with id 'resp_doesnotexist' not found." in str(missing.value)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.cancel("resp_doesnotexist")
    with pytest.raises(openai.NotFoundError) as follow:
        await sdk.responses.create(
            model=MODEL, input="x", previous_response_id="resp_doesnotexist", max_output_tokens=4
        )
    assert "Response with id 'resp_doesnotexist' not found." in str(follow.value)
    not_stored = await sdk.responses.create(model=MODEL, input="x", store=False, max_output_tokens=4)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(not_stored.id)
    assert lookups(runtime)["not_found"] == 4  # an unknown id three times, one never stored: all asked
    text = runtime.metrics.render().decode()
    assert 'route="/v1/responses/{id}"' in text  # one label for every id
    assert "resp_doesnotexist" not in text


async def test_background_responses_are_cancelled_on_their_engine(
    engines: list[SimCluster], stack: tuple[GatewayRuntime, openai.AsyncOpenAI]
) -> None:
    """`background: true` answers at once with a queued response; cancelling it through the gateway reaches
    the one engine running it (the other two would answer 404)."""
    _, sdk = stack
    for cluster in engines:
        set_slow_token_s(cluster, 600.0)  # still running whenever it is cancelled
    queued = [
        await sdk.responses.create(model=MODEL, input=f"job {i}", background=True, max_output_tokens=4)
        for i in range(3)
    ]
    for job in queued:
        assert job.status == "queued"
        cancelled = await sdk.responses.cancel(job.id)
        assert (cancelled.id, cancelled.status) == (job.id, "cancelled")
        assert (await sdk.responses.retrieve(job.id)).status == "cancelled"
    assert all(not c.engines[0].scheduler.running for c in engines)


async def test_a_gateway_that_never_saw_the_id_asks_every_engine(engines: list[SimCluster]) -> None:
    """Another gateway replica (or this one after a restart) finds the engine by asking each one."""
    urls = [c.urls[0] for c in engines]
    first = await gateway_for(urls)
    sdk = sdk_for(first)
    try:
        made = [
            await sdk.responses.create(model=MODEL, input=f"start {i}", max_output_tokens=4) for i in range(3)
        ]
    finally:
        await sdk.close()
        await first.stop()
    second = await gateway_for(urls)
    sdk = sdk_for(second)
    try:
        got = await sdk.responses.retrieve(made[0].id)
        assert got.id == made[0].id
        follow = [
            await sdk.responses.create(
                model=MODEL, input="more", previous_response_id=m.id, max_output_tokens=4
            )
            for m in made
        ]
        assert [f.previous_response_id for f in follow] == [m.id for m in made]
        counts = lookups(second)
        assert counts["probe_hit"] == 3  # made[0] once (then known), made[1], made[2]
        assert counts["hit"] == 1
        # what it learnt by asking is used from then on: no more probes
        await sdk.responses.create(
            model=MODEL, input="again", previous_response_id=follow[2].id, max_output_tokens=4
        )
        assert lookups(second)["probe_hit"] == 3
    finally:
        await sdk.close()
        await second.stop()


async def test_an_engine_that_left_or_stopped(
    engines: list[SimCluster], stack: tuple[GatewayRuntime, openai.AsyncOpenAI]
) -> None:
    runtime, sdk = stack
    made = [
        await sdk.responses.with_raw_response.create(model=MODEL, input=f"hi {i}", max_output_tokens=4)
        for i in range(3)
    ]
    by_endpoint = {raw.headers["x-eksinfer-endpoint"]: raw.parse().id for raw in made}
    urls = [c.urls[0] for c in engines]
    left, stopped, kept = (u.split("://")[1] for u in urls)
    runtime.registry.remove(EndpointId(left))  # discovery saw the pod go: its store went with it
    assert len(runtime.registry.all()) == 2
    for call in (
        sdk.responses.create(
            model=MODEL, input="x", previous_response_id=by_endpoint[left], max_output_tokens=4
        ),
        sdk.responses.retrieve(by_endpoint[left]),
    ):
        with pytest.raises(openai.NotFoundError) as gone:
            await call
        assert gone.value.code == "response_engine_gone"
        assert "has left the pool" in gone.value.message
    await engines[1].stop()  # still registered, but it does not answer
    with pytest.raises(openai.APIStatusError) as down:
        await sdk.responses.create(
            model=MODEL, input="x", previous_response_id=by_endpoint[stopped], max_output_tokens=4
        )
    assert down.value.status_code == 503
    assert isinstance(down.value.body, dict)
    assert down.value.body["code"] == "response_engine_unavailable"
    ok = await sdk.responses.create(
        model=MODEL, input="x", previous_response_id=by_endpoint[kept], max_output_tokens=4
    )
    assert ok.previous_response_id == by_endpoint[kept]
    counts = lookups(runtime)
    assert (counts["gone"], counts["unavailable"]) == (2, 1)


async def test_a_pinned_follow_up_skips_the_cascade(start: StartCluster) -> None:  # noqa: F811
    """A conversation stored on the second tier's engine continues there, although the first tier is
    preferred, and never falls back to the first tier when its engine is down. (The conversation is started
    through a gateway whose cascade prefers eks, as another replica with another config might.)"""
    onprem = await start(enable_responses_store=True)
    eks = await start(enable_responses_store=True)
    urls = [onprem.urls[0], eks.urls[0]]
    pool_of = {eks.urls[0]: "eks", onprem.urls[0]: "onprem"}
    other = await gateway_for(urls, pool_of=pool_of, models={MODEL: {"cascade": ["eks", "onprem"]}})
    sdk = sdk_for(other)
    try:
        first = await sdk.responses.with_raw_response.create(model=MODEL, input="start", max_output_tokens=4)
        assert first.headers["x-eksinfer-pool"] == "eks"
    finally:
        await sdk.close()
        await other.stop()
    runtime = await gateway_for(urls, pool_of=pool_of, models={MODEL: {"cascade": ["onprem", "eks"]}})
    sdk = sdk_for(runtime)
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.port}")
    try:
        fresh = await sdk.responses.with_raw_response.create(model=MODEL, input="new", max_output_tokens=4)
        assert fresh.headers["x-eksinfer-pool"] == "onprem"  # the cascade's order for new conversations
        follow = await sdk.responses.with_raw_response.create(
            model=MODEL, input="more", previous_response_id=first.parse().id, max_output_tokens=4
        )
        assert follow.headers["x-eksinfer-pool"] == "eks"
        await eks.stop()
        down = await http.post(
            "/v1/responses",
            json={"model": MODEL, "input": "more", "previous_response_id": follow.parse().id},
        )
        assert down.status_code == 503
        assert down.json()["error"]["code"] == "response_engine_unavailable"
        assert "pool 'eks'" in down.json()["error"]["message"]
        assert lookups(runtime)["probe_hit"] == 1
    finally:
        await http.aclose()
        await sdk.close()
        await runtime.stop()


async def test_routes_vllm_does_not_have(stack: tuple[GatewayRuntime, openai.AsyncOpenAI]) -> None:
    """vLLM 0.32 has no DELETE of a response and no input_items: 405 with `Allow` and 404, as it answers."""
    runtime, _ = stack
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.port}") as http:
        delete = await http.delete("/v1/responses/resp_1")
        items = await http.get("/v1/responses/resp_1/input_items")
    assert (delete.status_code, delete.headers["Allow"]) == (405, "GET, HEAD")
    assert delete.json()["error"]["code"] == "method_not_allowed"
    assert items.status_code == 404


async def test_an_id_unknown_while_an_engine_is_silent(start: StartCluster) -> None:  # noqa: F811
    """Looking for an id the gateway never saw: an engine that does not answer might hold it, so the answer
    is 503 (retry), not 404; once only engines that answered remain, vLLM's 404 body. No scraper runs here,
    so both endpoints stay "healthy" whatever they do."""
    cluster = await start(enable_responses_store=True)
    registry = EndpointRegistry()
    alive = registry.add(EndpointSpec(cluster.urls[0], models=(MODEL,)))
    silent = registry.add(EndpointSpec(f"http://127.0.0.1:{free_port()}", models=(MODEL,)))
    upstream = UpstreamPool(connect_timeout_s=2.0)
    pins = ResponsePins(
        ServerConfig(), registry, upstream, ApiKeys(frozenset()), GatewayMetrics(registry.all, dict)
    )
    try:
        with pytest.raises(RequestRefused) as refused:
            await pins.find("resp_nowhere", MODEL, "previous_response_id")
        assert (refused.value.status, refused.value.code) == (503, "response_engine_unavailable")
        assert "1 of 2 did not answer" in str(refused.value)
        registry.remove(silent.id)
        state, body = await pins.find("resp_nowhere", MODEL, "previous_response_id")
        assert state is None
        assert body is not None
        assert json.loads(body)["error"]["message"] == "Response with id 'resp_nowhere' not found."
        async with httpx.AsyncClient() as http:
            made = await http.post(cluster.urls[0] + "/v1/responses", json={"model": MODEL, "input": "hi"})
        found, _ = await pins.find(made.json()["id"], None, "response_id")
        assert found is alive
        assert len(pins.ids) == 1  # remembered
    finally:
        await upstream.close()
