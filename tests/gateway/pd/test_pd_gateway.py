"""P/D through the gateway on 127.0.0.1: the openai SDK -> gateway (real Router, kv-aware) -> fake NIXL
engines (`nixl_fakes.py`: vLLM NixlConnector field names; stand-ins until the simulator speaks it)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eksinfer.gateway.config import parse_config
from eksinfer.gateway.pd.protocol import PREFILL_KV_TRANSFER_PARAMS
from eksinfer.gateway.resilience.stall import Watched
from eksinfer.gateway.routing import Router
from eksinfer.gateway.runtime import GatewayRuntime, build_runtime
from eksinfer.gateway.scheduling.config import load_routing_config
from eksinfer.gateway.scheduling.framework import Decision, EndpointState
from tests.gateway.pd.nixl_fakes import NixlFabric, NixlFakeEngine
from tests.waiting import DEADLINE_S, until

pytestmark = pytest.mark.timeout(30)

LONG = "You are a careful assistant who reads the whole contract before answering. " * 40  # ~750 tokens
SHORT = "hi"


class CountingRouter(Router):
    """The real router, counting the release hooks per decision (each must run exactly once)."""

    def __init__(self) -> None:
        super().__init__(load_routing_config({"preset": "kv-aware", "tokenizer": {"mode": "approx"}}))
        self.decisions: list[Decision] = []
        self.first_token_calls: Counter[int] = Counter()
        self.finish_calls: Counter[int] = Counter()
        self.finish_ok: dict[int, bool] = {}
        self._inside_finish = False

    async def route(
        self,
        model: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        endpoints: Sequence[EndpointState],
        *,
        profile: str | None = None,
    ) -> Decision:
        decision = await super().route(model, body, headers, endpoints, profile=profile)
        self.decisions.append(decision)
        return decision

    def on_first_token(self, decision: Decision) -> None:
        if not self._inside_finish:  # Router.on_finish releases the prompt tokens through this method too
            self.first_token_calls[id(decision)] += 1
        super().on_first_token(decision)

    def on_finish(self, decision: Decision, ok: bool) -> None:
        self.finish_calls[id(decision)] += 1
        self.finish_ok[id(decision)] = ok
        self._inside_finish = True
        try:
            super().on_finish(decision, ok)
        finally:
            self._inside_finish = False

    def pools(self) -> list[str]:
        return [d.endpoint.pool for d in self.decisions]


@dataclass
class Stack:
    runtime: GatewayRuntime
    router: CountingRouter
    prefill: NixlFakeEngine
    decode: NixlFakeEngine
    fabric: NixlFabric
    client: openai.AsyncOpenAI

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.runtime.port}"

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with httpx.AsyncClient() as http:
            text = (await http.get(self.base + "/metrics")).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }

    def idle(self) -> bool:
        return all(
            s.inflight_requests == 0 and s.inflight_prompt_tokens == 0 for s in self.runtime.registry.all()
        )


async def start_stack(resilience: dict[str, Any] | None = None, **profile: Any) -> Stack:
    fabric = NixlFabric()
    prefill = await NixlFakeEngine(fabric, "engine-prefill", prefix_cached=96).start()
    decode = await NixlFakeEngine(fabric, "engine-decode").start()
    pd = {"prefill_pool": "prefill", "decode_pool": "decode", "min_uncached_tokens": 256, **profile}
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "route_headers": True},
            "endpoints": {
                "static": [
                    {"url": prefill.url, "pool": "prefill", "models": ["tiny"]},
                    {"url": decode.url, "pool": "decode", "models": ["tiny"]},
                ]
            },
            "disaggregation": {"tiny": pd},
            **({"resilience": resilience} if resilience is not None else {}),
        }
    )
    router = CountingRouter()
    runtime = build_runtime(config, router=router)
    await runtime.start()
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{runtime.port}/v1", api_key="x", max_retries=0)
    return Stack(runtime, router, prefill, decode, fabric, client)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    s = await start_stack()
    yield s
    await s.client.close()
    await s.runtime.stop()
    await s.prefill.stop()
    await s.decode.stop()


def exactly_once_each(router: CountingRouter) -> bool:
    ids = [id(d) for d in router.decisions]
    return all(router.first_token_calls[i] <= 1 and router.finish_calls[i] == 1 for i in ids)


async def test_remote_prefill_streams_through_openai_sdk_with_exact_fields(stack: Stack) -> None:
    messages = [{"role": "system", "content": LONG}, {"role": "user", "content": "the question"}]
    stream = await stack.client.chat.completions.create(
        model="tiny",
        messages=messages,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=50,
        extra_body={"min_tokens": 2},
    )
    pieces, usage = [], None
    async with asyncio.timeout(DEADLINE_S):
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
    assert pieces == [" w0", " w1", " w2"]
    # hop 1: the client's body turned into a one-token, non-streamed prefill request (llm-d NIXL v2 step 1)
    assert stack.prefill.prefills == 1
    assert stack.prefill.remote_decodes == 0
    sent = stack.prefill.bodies[0]
    assert sent["kv_transfer_params"] == {
        "do_remote_decode": True,
        "do_remote_prefill": False,
        "remote_engine_id": None,
        "remote_block_ids": None,
        "remote_host": None,
        "remote_port": None,
    }
    assert sent["kv_transfer_params"] == PREFILL_KV_TRANSFER_PARAMS
    assert (sent["max_tokens"], sent["max_completion_tokens"], sent["stream"]) == (1, 1, False)
    assert "stream_options" not in sent
    assert "min_tokens" not in sent
    assert sent["messages"] == messages
    assert len(stack.prefill.headers[0]["x-request-id"]) == 32
    # hop 2: the client's own body plus the prefiller's kv_transfer_params, which the decode side pulled
    assert stack.decode.remote_decodes == 1
    assert stack.decode.local_prefills == 0
    decoded = stack.decode.bodies[0]
    params = decoded.pop("kv_transfer_params")
    assert decoded == {
        "model": "tiny",
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "min_tokens": 2,
    }
    assert set(params) == {
        "do_remote_prefill",
        "do_remote_decode",
        "remote_block_ids",
        "remote_engine_id",
        "remote_request_id",
        "remote_host",
        "remote_port",
        "tp_size",
    }
    assert (params["do_remote_prefill"], params["remote_engine_id"]) == (True, "engine-prefill")
    assert stack.fabric.pulled == [("engine-prefill", params["remote_request_id"])]
    assert not stack.fabric.pinned
    # usage reports what the prefiller had cached, not the decode side's pulled tokens
    assert usage is not None
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 96
    assert stack.router.pools() == ["decode", "prefill"]  # decode pool routed first
    await until(stack.idle, what="in-flight counters back to zero")
    assert exactly_once_each(stack.router)
    m = await stack.metrics()
    assert m[("eksinfer_gateway_pd_decisions_total", (("decision", "remote"), ("model", "tiny")))] == 1
    assert m[("eksinfer_gateway_pd_prefill_duration_seconds_count", (("model", "tiny"),))] == 1
    assert m[("eksinfer_gateway_pd_coordination_overhead_seconds_count", (("model", "tiny"),))] == 1


async def test_route_header_explains_both_hops_and_json_usage_is_rewritten(stack: Stack) -> None:
    raw = await stack.client.completions.with_raw_response.create(model="tiny", prompt=LONG, max_tokens=5)
    answer = raw.parse()
    route = raw.headers["x-eksinfer-route"]
    assert f"endpoint={stack.decode.url.split('//')[1]}" in route
    assert "pd=remote" in route
    assert f"prefill=[endpoint={stack.prefill.url.split('//')[1]}" in route
    assert answer.usage is not None
    assert answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens == 96
    assert int(raw.headers["content-length"]) == len(raw.content)
    assert "max_completion_tokens" not in stack.prefill.bodies[0]  # completions has only max_tokens


@pytest.mark.parametrize(
    ("threshold", "prompt", "remote"),
    [
        (256, SHORT, False),  # a chat turn: prefilled where it decodes
        (256, LONG, True),  # ~750 uncached tokens: prefilled on the prefill pool
        (0, SHORT, True),  # 0: always remote (llm-d's always-disagg decider)
        (100_000, LONG, False),
    ],
)
async def test_decider_threshold(threshold: int, prompt: str, remote: bool) -> None:
    s = await start_stack(min_uncached_tokens=threshold)
    try:
        answer = await s.client.completions.create(model="tiny", prompt=prompt, max_tokens=5)
        assert answer.choices[0].text == " w0 w1 w2"
        assert s.prefill.prefills == (1 if remote else 0)
        assert s.decode.remote_decodes == (1 if remote else 0)
        assert s.decode.local_prefills == (0 if remote else 1)
        assert ("kv_transfer_params" in s.decode.bodies[0]) is remote
        await until(s.idle, what="in-flight counters back to zero")
        m = await s.metrics()
        label = "remote" if remote else "local"
        assert m[("eksinfer_gateway_pd_decisions_total", (("decision", label), ("model", "tiny")))] == 1
    finally:
        await s.client.close()
        await s.runtime.stop()
        await s.prefill.stop()
        await s.decode.stop()


async def test_prefill_error_falls_back_to_local_prefill(stack: Stack) -> None:
    stack.prefill.prefill_status = 500
    answer = await stack.client.completions.create(model="tiny", prompt=LONG, max_tokens=5)
    assert answer.choices[0].text == " w0 w1 w2"
    assert stack.prefill.prefills == 1
    assert stack.decode.local_prefills == 1
    assert "kv_transfer_params" not in stack.decode.bodies[0]
    await until(stack.idle, what="in-flight counters back to zero")
    assert exactly_once_each(stack.router)
    prefill_decision = next(d for d in stack.router.decisions if d.endpoint.pool == "prefill")
    assert stack.router.finish_ok[id(prefill_decision)] is False
    m = await stack.metrics()
    assert m[("eksinfer_gateway_pd_fallbacks_total", (("model", "tiny"), ("reason", "status")))] == 1


async def test_prefill_without_transfer_params_falls_back(stack: Stack) -> None:
    stack.prefill.prefill_without_params = True
    answer = await stack.client.completions.create(model="tiny", prompt=LONG, max_tokens=5)
    assert answer.choices[0].text == " w0 w1 w2"
    assert stack.decode.local_prefills == 1
    m = await stack.metrics()
    assert m[("eksinfer_gateway_pd_fallbacks_total", (("model", "tiny"), ("reason", "invalid_answer")))] == 1


async def test_prefill_timeout_falls_back_and_aborts_the_prefill() -> None:
    s = await start_stack(prefill_timeout_s=0.2)
    s.prefill.prefill_hold = asyncio.Event()  # never set: the prefiller hangs
    try:
        stream = await s.client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": LONG}], stream=True
        )
        assert [c.choices[0].delta.content async for c in stream] == [" w0", " w1", " w2"]
        assert s.decode.local_prefills == 1
        await until(lambda: s.prefill.cancelled == 1, what="the prefill request aborted (connection closed)")
        await until(s.idle, what="in-flight counters back to zero")
        assert exactly_once_each(s.router)
        m = await s.metrics()
        assert m[("eksinfer_gateway_pd_fallbacks_total", (("model", "tiny"), ("reason", "timeout")))] == 1
    finally:
        await s.client.close()
        await s.runtime.stop()
        await s.prefill.stop()
        await s.decode.stop()


async def test_unreachable_prefiller_falls_back(stack: Stack) -> None:
    await stack.prefill.stop()  # refused connections; the scraper may also take it out of routing
    answer = await stack.client.completions.create(model="tiny", prompt=LONG, max_tokens=5)
    assert answer.choices[0].text == " w0 w1 w2"
    assert stack.decode.local_prefills == 1
    m = await stack.metrics()
    reasons = {
        dict(k[1]).get("reason") for k, v in m.items() if k[0] == "eksinfer_gateway_pd_fallbacks_total"
    }
    assert reasons & {"connect", "no_prefill_endpoint"}
    await until(stack.idle, what="in-flight counters back to zero")


async def test_accounting_during_decode_and_release_once(stack: Stack) -> None:
    stack.decode.decode_hold = asyncio.Event()
    task = asyncio.create_task(stack.client.completions.create(model="tiny", prompt=LONG, max_tokens=5))
    await until(lambda: stack.decode.remote_decodes == 1, what="decode request in flight")
    prefill_ep, decode_ep = (stack.runtime.registry.all()[i] for i in (0, 1))
    # the prefill hop is over: its ticket is released; the decode request is still counted
    assert (prefill_ep.inflight_requests, prefill_ep.inflight_prompt_tokens) == (0, 0)
    assert decode_ep.inflight_requests == 1
    stack.decode.decode_hold.set()
    await task
    await until(stack.idle, what="in-flight counters back to zero")
    assert len(stack.router.decisions) == 2
    assert exactly_once_each(stack.router)
    assert all(stack.router.first_token_calls[id(d)] == 1 for d in stack.router.decisions)


async def test_client_disconnect_during_prefill_releases_the_prefill_hop(stack: Stack) -> None:
    stack.prefill.prefill_hold = asyncio.Event()
    async with httpx.AsyncClient(base_url=stack.base) as http:
        task = asyncio.create_task(
            http.post("/v1/completions", json={"model": "tiny", "prompt": LONG, "max_tokens": 5})
        )
        await until(lambda: stack.prefill.prefills == 1, what="prefill in flight")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await until(lambda: stack.prefill.cancelled == 1, what="prefill aborted")
    await until(stack.idle, what="in-flight counters back to zero")
    assert exactly_once_each(stack.router)
    assert stack.decode.bodies == []  # nothing reached the decode endpoint


async def test_other_models_and_client_transfer_params_are_left_alone(stack: Stack) -> None:
    body = {
        "model": "tiny",
        "prompt": LONG,
        "max_tokens": 5,
        "kv_transfer_params": {"do_remote_decode": False},
    }
    async with httpx.AsyncClient(base_url=stack.base) as http:
        r = await http.post("/v1/completions", json=body)
    assert r.status_code == 200
    assert stack.prefill.prefills == 0
    assert stack.decode.bodies[0]["kv_transfer_params"] == {"do_remote_decode": False}


async def stop_stack(s: Stack) -> None:
    await s.client.close()
    await s.runtime.stop()
    await s.prefill.stop()
    await s.decode.stop()


async def test_decode_endpoint_is_not_watched_for_stalls_during_the_prefill_hop() -> None:
    """The prefill hop runs in the gateway before anything is sent to the decode endpoint (a long prompt
    may queue behind others on the prefill pool): that wait is no evidence against the decode endpoint.
    Judged with an injected `now` an hour ahead (the real watchdog is kept out of the way)."""
    s = await start_stack(resilience={"stall_after_s": 3600})
    s.prefill.prefill_hold = asyncio.Event()
    s.decode.decode_hold = asyncio.Event()
    stalls = s.runtime.resilience.stalls
    loop = asyncio.get_running_loop()
    try:
        task = asyncio.create_task(
            s.client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": LONG}], stream=True
            )
        )
        # the prefill hop in flight: nothing sent to the decode endpoint, so nothing of it to judge
        await until(lambda: s.prefill.prefills == 1, what="the prefill hop in flight")
        assert stalls.stalled(loop.time() + 3 * 3600) == []
        s.prefill.prefill_hold.set()
        # the decode request sent and silent: now the decode endpoint's own wait is watched
        await until(lambda: s.decode.remote_decodes == 1, what="the decode request in flight")
        (judged,) = stalls.stalled(loop.time() + 3 * 3600)
        decode_ep = next(ep for ep in s.runtime.registry.all() if ep.pool == "decode")
        assert judged[0] == decode_ep.id
        s.decode.decode_hold.set()
        stream = await task
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        assert pieces == [" w0", " w1", " w2"]
        assert s.router.pools() == ["decode", "prefill"]  # one attempt, no retry
        await until(s.idle, what="in-flight counters back to zero")
    finally:
        await stop_stack(s)


async def test_prefill_hop_longer_than_stall_after_s_does_not_fail_the_request() -> None:
    """End to end with the watchdog running (stall_after_s 0.2 s): the prefill answer is held until the
    watchdog has checked at a time well past stall_after_s plus the prompt's grace since the request came in
    (the watchdog's own calls are recorded, so no sleep decides it). Before the decode endpoint was watched
    from the prefill hop's start, that check ejected it and the client got a 504."""
    s = await start_stack(resilience={"stall_after_s": 0.2})
    s.prefill.prefill_hold = asyncio.Event()
    stalls = s.runtime.resilience.stalls
    checked: list[float] = []
    judge = stalls.stalled

    def recording(now: float, *args: Any) -> list[tuple[str, list[Watched]]]:
        checked.append(now)
        return judge(now, *args)

    stalls.stalled = recording  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    try:
        task = asyncio.create_task(
            s.client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": LONG}], stream=True
            )
        )
        await until(lambda: s.prefill.prefills == 1, what="the prefill hop in flight")
        past = loop.time() + 1.0  # 0.2 s + ~0.15 s of grace for ~750 prompt tokens, with room
        await until(lambda: any(t > past for t in checked), what="a watchdog check past stall_after_s")
        s.prefill.prefill_hold.set()
        stream = await task
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        assert pieces == [" w0", " w1", " w2"]
        assert stalls.stalls_total == 0
        assert s.decode.remote_decodes == 1
        assert s.decode.local_prefills == 0
        assert s.router.pools() == ["decode", "prefill"]  # one attempt, no retry
        decode_ep = next(ep for ep in s.runtime.registry.all() if ep.pool == "decode")
        assert not s.runtime.resilience.detector.is_ejected(decode_ep)
        await until(s.idle, what="in-flight counters back to zero")
    finally:
        await stop_stack(s)
