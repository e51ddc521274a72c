"""OpenTelemetry traces of P/D requests: the openai SDK -> gateway (tracing on, real kv-aware router) -> the
simulator's prefill and decode engines (`--prefill-replicas 1`: a kv_producer and a kv_consumer, KV over a
simulated NVLink). Spans are read from the OTel SDK's in-memory exporter.

What the engines receive is read by a recording pass-through in front of each engine (`Recorder`): the
simulator does not keep request headers, and vLLM only hands `traceparent` to its own OTLP exporter. The
recorder forwards every request and answer unchanged. The fallback case uses the fake NIXL engines
(`nixl_fakes.py`), whose prefiller can be told to answer 500, which the simulator cannot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from eksinfer.gateway import tracing as tr
from eksinfer.gateway.config import parse_config
from eksinfer.gateway.runtime import GatewayRuntime, make_router
from eksinfer.sim.cluster import SimCluster, start_cluster
from eksinfer.sim.config import SimOptions
from tests.gateway.pd.nixl_fakes import NixlFabric, NixlFakeEngine
from tests.local_http import serve
from tests.waiting import DEADLINE_S, until

pytestmark = pytest.mark.timeout(60)

NIXL = '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'
DOCUMENT = " ".join(f"clause {i} of the contract says the tenant pays on time." for i in range(60))
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


@dataclass
class Recorder:
    """Forwards everything to `target` and keeps the headers of each POST (the API requests)."""

    target: str
    posts: list[dict[str, str]] = field(default_factory=list)
    url: str = ""
    runner: web.AppRunner | None = None
    session: aiohttp.ClientSession | None = None

    async def start(self) -> Recorder:
        self.session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self.runner, self.url = await serve(app)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        if request.method == "POST":
            self.posts.append({k.lower(): v for k, v in request.headers.items()})
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP | {"host"}}
        async with self.session.request(
            request.method, self.target + request.path_qs, data=await request.read(), headers=headers
        ) as upstream:
            kept = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
            response = web.StreamResponse(status=upstream.status, headers=kept)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


def traced_config(prefill_url: str, decode_url: str, **profile: Any) -> Any:
    return parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "route_headers": True},
            "endpoints": {
                "static": [
                    {"url": prefill_url, "pool": "prefill", "models": ["tiny"]},
                    {"url": decode_url, "pool": "decode", "models": ["tiny"]},
                ]
            },
            "routing": {"preset": "kv-aware", "tokenizer": {"mode": "builtin"}},
            "disaggregation": {"tiny": {"prefill_pool": "prefill", "decode_pool": "decode", **profile}},
            "observability": {"tracing": True},
        }
    )


def exporter_and_provider() -> tuple[InMemorySpanExporter, TracerProvider]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, provider


@dataclass
class Stack:
    cluster: SimCluster
    prefill: Recorder
    decode: Recorder
    runtime: GatewayRuntime
    exporter: InMemorySpanExporter
    client: openai.AsyncOpenAI


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    from eksinfer.sim.pd.config import KvTransferConfig

    options = SimOptions(
        port=0,
        time_scale=0.0,
        num_gpu_blocks=512,
        max_model_len=4096,
        natural_output_tokens=0,
        enable_prompt_tokens_details=True,
        served_model_name=("tiny",),
        kv_transfer=KvTransferConfig.from_json(NIXL),
        kv_link="nvlink",
        nixl_side_channel_port=0,
        prefill_replicas=1,
    )
    cluster = await start_cluster(options, 2)
    prefill = await Recorder(cluster.urls[0]).start()
    decode = await Recorder(cluster.urls[1]).start()
    exporter, provider = exporter_and_provider()
    config = traced_config(prefill.url, decode.url)
    runtime = GatewayRuntime(config, make_router(config), tracer_provider=provider)
    await runtime.start()
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{runtime.port}/v1", api_key="x", max_retries=0)
    yield Stack(cluster, prefill, decode, runtime, exporter, client)
    await client.close()
    await runtime.stop()
    await prefill.stop()
    await decode.stop()
    await cluster.stop()


async def chat(client: openai.AsyncOpenAI, messages: list[dict[str, str]]) -> str:
    """One streamed chat with the client's own `traceparent`; returns the route explanation."""
    raw = await client.chat.completions.with_raw_response.create(
        model="tiny",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"traceparent": CLIENT_PARENT},
    )
    tokens = 0
    async with asyncio.timeout(DEADLINE_S):
        async for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                tokens += 1
    assert tokens == 8
    return raw.headers["x-eksinfer-route"]


def by_name(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    named = {s.name: s for s in spans}
    assert len(named) == len(spans), [s.name for s in spans]  # one span of each per request
    return named


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


def child_of(hop: ReadableSpan, request: ReadableSpan) -> bool:
    assert hop.parent is not None
    assert request.context is not None
    return hop.parent.span_id == request.context.span_id and hop.context.trace_id == request.context.trace_id


def parent_ids(traceparent: str) -> tuple[str, str]:
    """(trace id, parent span id) of a W3C `traceparent` (the flags may differ: the SDK sets random-id)."""
    version, trace_id, span_id, _flags = traceparent.split("-")
    assert version == "00"
    return trace_id, span_id


async def test_remote_prefill_has_two_hop_spans_and_each_engine_gets_its_own(stack: Stack) -> None:
    first = [{"role": "system", "content": DOCUMENT}, {"role": "user", "content": "Who pays?"}]
    assert "pd=remote" in await chat(stack.client, first)
    await until(lambda: len(stack.exporter.get_finished_spans()) == 3, what="request span ended")
    spans = by_name(stack.exporter.get_finished_spans())
    request, prefill, decode = spans["POST /v1/chat/completions"], spans["prefill"], spans["decode"]

    # One trace, the client's; both hops are CLIENT children of the gateway's request span.
    assert hex_ids(request)[0] == CLIENT_TRACE
    assert request.parent is not None
    assert format(request.parent.span_id, "016x") == CLIENT_SPAN
    assert child_of(prefill, request)
    assert child_of(decode, request)
    assert prefill.kind == decode.kind == SpanKind.CLIENT
    # The hops in order: the prefill answer before the decode request, the decode before the request's end.
    assert prefill.end_time is not None
    assert decode.start_time is not None
    assert prefill.end_time <= decode.start_time
    assert decode.end_time is not None
    assert request.end_time is not None
    assert decode.end_time <= request.end_time

    # Each engine received its hop's traceparent (the simulator's vLLM spans would hang under the hop).
    [to_prefill] = stack.prefill.posts
    [to_decode] = stack.decode.posts
    assert parent_ids(to_prefill["traceparent"]) == hex_ids(prefill)
    assert parent_ids(to_decode["traceparent"]) == hex_ids(decode)

    prefill_ep = stack.prefill.url.split("://")[1]
    decode_ep = stack.decode.url.split("://")[1]
    p, d, r = (dict(s.attributes or {}) for s in (prefill, decode, request))
    assert p[tr.ATTR_PD_ROLE] == "prefill"
    assert (p[tr.ATTR_ENDPOINT], p[tr.ATTR_POOL], p[tr.ATTR_MODEL]) == (prefill_ep, "prefill", "tiny")
    assert p[tr.ATTR_INPUT_TOKENS] > 500  # the document, as the router counted it
    assert p[tr.ATTR_PREDICTED_CACHED] == 0
    assert (p[tr.ATTR_STATUS], p[tr.ATTR_PD_OUTCOME], p[tr.ATTR_PD_PREFILL_CACHED]) == (200, "ok", 0)
    assert d[tr.ATTR_PD_ROLE] == "decode"
    assert (d[tr.ATTR_ENDPOINT], d[tr.ATTR_POOL], d[tr.ATTR_PD_MODE]) == (decode_ep, "decode", "remote")
    assert d[tr.ATTR_INPUT_TOKENS] == p[tr.ATTR_INPUT_TOKENS]
    assert (d[tr.ATTR_STATUS], d[tr.ATTR_PD_OUTCOME]) == (200, "ok")
    assert d[tr.ATTR_PD_PREFILL_ENDPOINT] == prefill_ep
    assert r[tr.ATTR_PD_MODE] == "remote"
    assert (r[tr.ATTR_PD_PREFILL_ENDPOINT], r[tr.ATTR_PD_PREFILL_POOL]) == (prefill_ep, "prefill")
    assert r[tr.ATTR_PD_DECODE_ENDPOINT] == decode_ep
    assert r[tr.ATTR_PD_PREFILL_DURATION] > 0
    assert r[tr.ATTR_ENDPOINT] == decode_ep  # the endpoint that answered the client
    assert all(s.status.status_code != StatusCode.ERROR for s in (request, prefill, decode))

    # The same prompt again: the decode engine holds it, so it prefills locally: one hop, mode "local".
    stack.exporter.clear()
    assert "pd=local" in await chat(stack.client, first)
    await until(lambda: len(stack.exporter.get_finished_spans()) == 2, what="request span ended")
    spans = by_name(stack.exporter.get_finished_spans())
    request, decode = spans["POST /v1/chat/completions"], spans["decode"]
    assert child_of(decode, request)
    assert dict(decode.attributes or {})[tr.ATTR_PD_MODE] == "local"
    assert dict(decode.attributes or {})[tr.ATTR_PREDICTED_CACHED] > 0
    assert dict(request.attributes or {})[tr.ATTR_PD_MODE] == "local"
    assert len(stack.prefill.posts) == 1  # no second prefill
    assert parent_ids(stack.decode.posts[-1]["traceparent"]) == hex_ids(decode)


async def test_prefill_failure_is_an_error_span_and_decode_says_fallback() -> None:
    fabric = NixlFabric()
    prefill = await NixlFakeEngine(fabric, "engine-prefill", prefill_status=500).start()
    decode = await NixlFakeEngine(fabric, "engine-decode").start()
    exporter, provider = exporter_and_provider()
    config = traced_config(prefill.url, decode.url, min_uncached_tokens=16)
    runtime = GatewayRuntime(config, make_router(config), tracer_provider=provider)
    await runtime.start()
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{runtime.port}/v1", api_key="x", max_retries=0)
    try:
        answer = await client.completions.create(model="tiny", prompt=DOCUMENT, max_tokens=5)
        assert answer.choices[0].text == " w0 w1 w2"  # the client sees no error
        await until(lambda: len(exporter.get_finished_spans()) == 3, what="request span ended")
    finally:
        await client.close()
        await runtime.stop()
        await prefill.stop()
        await decode.stop()
    spans = by_name(exporter.get_finished_spans())
    request, hop, dec = spans["POST /v1/completions"], spans["prefill"], spans["decode"]
    assert child_of(hop, request)
    assert child_of(dec, request)
    assert hop.status.status_code == StatusCode.ERROR
    assert "answered 500" in (hop.status.description or "")
    p, d, r = (dict(s.attributes or {}) for s in (hop, dec, request))
    assert (p[tr.ATTR_STATUS], p[tr.ATTR_PD_OUTCOME]) == (500, "status")
    assert tr.ATTR_PD_PREFILL_CACHED not in p
    assert (d[tr.ATTR_PD_MODE], d[tr.ATTR_PD_FALLBACK_REASON], d[tr.ATTR_PD_OUTCOME]) == (
        "fallback",
        "status",
        "ok",
    )
    assert dec.status.status_code != StatusCode.ERROR
    assert (r[tr.ATTR_PD_MODE], r[tr.ATTR_PD_FALLBACK_REASON]) == ("fallback", "status")
    assert (r[tr.ATTR_STATUS], request.status.status_code) == (200, StatusCode.UNSET)
    # Each engine got its own hop's traceparent, in the gateway's trace (no client traceparent here).
    assert parent_ids(prefill.headers[0]["traceparent"]) == hex_ids(hop)
    assert parent_ids(decode.headers[0]["traceparent"]) == hex_ids(dec)
    assert hex_ids(hop)[0] == hex_ids(request)[0]
    assert request.parent is None
