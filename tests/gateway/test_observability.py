"""Access log, status JSON and OpenTelemetry traces end to end: the openai SDK / httpx -> gateway -> fake
engines on 127.0.0.1 (the fake engine stands in for vLLM: no GPU here). Spans are read from the SDK's own
in-memory exporter."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import httpx
import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from eksinfer.errors import ConfigError
from eksinfer.gateway import tracing
from eksinfer.gateway.accesslog import ACCESS_LOGGER, RequestRecord, default_handler
from eksinfer.gateway.config import parse_config
from eksinfer.gateway.observe import ObservabilityConfig, RequestObserver
from eksinfer.gateway.runtime import GatewayRuntime
from tests.gateway.test_proxy_fakes import EngineBehaviour, FakeEngine, RoundRobinRouter
from tests.waiting import until

pytestmark = pytest.mark.timeout(30)

SECRET = "zebra-violet-42 do not log me"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def access_lines() -> Iterator[list[str]]:
    """The operator's own handler on `eksinfer.access` (the gateway then adds none of its own)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    saved = (logger.handlers[:], logger.level, logger.propagate)
    handler = Lines()
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.fixture
async def engines() -> AsyncIterator[list[FakeEngine]]:
    started = [await FakeEngine().start(), await FakeEngine().start()]
    yield started
    for engine in started:
        await engine.stop()


async def start(
    engines: list[FakeEngine], observability: dict[str, Any], provider: Any = None, **top: Any
) -> GatewayRuntime:
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "endpoints": {"static": [{"url": e.url, "pool": f"p{i}"} for i, e in enumerate(engines)]},
            "scrape": {"interval_s": 0.05},
            "observability": observability,
            **top,
        }
    )
    runtime = GatewayRuntime(config, RoundRobinRouter(), tracer_provider=provider)
    await runtime.start()
    await until(lambda: all(s.models for s in runtime.registry.all()), what="engines' models scraped")
    return runtime


def sent(engine: FakeEngine) -> dict[str, str]:
    """The first request's headers as the engine got them, names lower-cased (HTTP names are caseless)."""
    return {k.lower(): v for k, v in engine.headers[0].items()}


def url(runtime: GatewayRuntime) -> str:
    return f"http://127.0.0.1:{runtime.port}"


async def test_access_log_one_json_line_per_request_without_prompt_text(
    engines: list[FakeEngine], access_lines: list[str]
) -> None:
    for engine in engines:
        engine.behaviour = EngineBehaviour(tokens=3)
    gw = await start(engines, {"access_log": True})
    try:
        client = openai.AsyncOpenAI(base_url=url(gw) + "/v1", api_key="unused", max_retries=0)
        messages: Any = [{"role": "user", "content": SECRET}]
        await client.chat.completions.create(model="tiny", messages=messages)
        stream = await client.chat.completions.create(
            model="tiny", messages=messages, stream=True, extra_headers={"x-request-id": "client-id-7"}
        )
        async for _ in stream:
            pass
        with pytest.raises(openai.NotFoundError):
            await client.completions.create(model="nope", prompt=SECRET)
        await client.close()
        await until(lambda: len(access_lines) == 3, what="three access lines")
    finally:
        await gw.stop()
    whole, streamed, refused = (json.loads(line) for line in access_lines)
    assert all(SECRET not in line and "zebra" not in line for line in access_lines)
    assert set(whole) == {
        "ts", "request_id", "route", "model", "pool", "endpoint", "status", "ttft_s", "e2e_s",
        "prompt_tokens", "cached_tokens", "generated_tokens", "preset", "reason", "attempts", "ttft_parts_s",
    }  # fmt: skip
    assert (whole["route"], whole["model"], whole["status"], whole["generated_tokens"]) == (
        "/v1/chat/completions", "tiny", 200, 3,
    )  # fmt: skip
    assert (whole["reason"], whole["preset"]) == ("round-robin", "round-robin")
    assert (whole["pool"], whole["endpoint"]) == ("p0", engines[0].url.split("://")[1])
    assert 0 < whole["ttft_s"] <= whole["e2e_s"]
    assert whole["attempts"] == 1
    parts = whole["ttft_parts_s"]  # one attempt, no failure: the engine's wait and the gateway's own time
    assert set(parts) == {"upstream", "gateway"}
    assert parts["upstream"] + parts["gateway"] == pytest.approx(whole["ttft_s"], abs=2e-6)
    assert (streamed["request_id"], streamed["generated_tokens"], streamed["pool"]) == (
        "client-id-7",
        3,
        "p1",
    )
    # The engine gets the client's request id, or the gateway's when the client sent none: logs join.
    assert sent(engines[1])["x-request-id"] == "client-id-7"
    assert sent(engines[0])["x-request-id"] == whole["request_id"]
    assert (refused["status"], refused["model"], refused["endpoint"], refused["ttft_s"]) == (
        404,
        "",
        "",
        None,
    )
    assert refused["ttft_parts_s"] is None


async def test_access_log_is_off_by_default(engines: list[FakeEngine], access_lines: list[str]) -> None:
    gw = await start(engines, {})
    try:
        async with httpx.AsyncClient() as client:
            body = {"model": "tiny", "prompt": "hi"}
            assert (await client.post(url(gw) + "/v1/completions", json=body)).status_code == 200
            status = (await client.get(url(gw) + "/status.json")).json()
    finally:
        await gw.stop()
    assert access_lines == []
    assert status["gateway"]["requests_total"] == 1  # the status page is on by default


async def test_status_json_and_page(engines: list[FakeEngine]) -> None:
    gw = await start(engines, {"recent_decisions": 4})
    try:
        async with httpx.AsyncClient() as client:
            for i in range(6):
                body = {"model": "tiny", "prompt": f"hello {i}", "stream": i % 2 == 0}
                assert (await client.post(url(gw) + "/v1/completions", json=body)).status_code == 200
            status = (await client.get(url(gw) + "/status.json")).json()
            page = await client.get(url(gw) + "/status")
    finally:
        await gw.stop()
    g = status["gateway"]
    assert (g["requests_total"], g["requests"], g["errors_total"], g["inflight"]) == (6, 6, 0, 0)
    assert 0 < g["ttft_p50_s"] <= g["ttft_p90_s"]
    assert [p["name"] for p in status["pools"]] == ["p0", "p1"]
    for pool in status["pools"]:
        (ep,) = pool["endpoints"]
        assert ep["healthy"] is True
        assert ep["requests"] == 3  # round-robin over two endpoints
        assert ep["inflight"] == 0
        assert ep["models"] == ["tiny"]
        assert ep["kv_usage"] == 0.0
    assert len(status["recent"]) == 4  # the ring keeps the newest 4 of 6
    assert [d["reason"] for d in status["recent"]] == ["round-robin"] * 4
    assert status["recent"][0]["ts"] >= status["recent"][-1]["ts"]
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert 'fetch("status.json"' in page.text


async def test_status_json_needs_the_api_key_when_auth_is_on(
    engines: list[FakeEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EKSINFER_TEST_KEYS", "sk-one")
    gw = await start(engines, {}, auth={"api_keys_env": "EKSINFER_TEST_KEYS"})
    try:
        async with httpx.AsyncClient() as client:
            denied = await client.get(url(gw) + "/status.json")
            allowed = await client.get(url(gw) + "/status.json", headers={"Authorization": "Bearer sk-one"})
            page = await client.get(url(gw) + "/status")
    finally:
        await gw.stop()
    assert denied.status_code == 401
    assert denied.json()["error"]["code"] == "invalid_api_key"
    assert allowed.status_code == 200
    assert page.status_code == 200  # the page holds no data; its script sends the key from #key=


async def test_status_page_can_be_switched_off(engines: list[FakeEngine]) -> None:
    gw = await start(engines, {"status_page": False})
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(url(gw) + "/status.json")).status_code == 404
    finally:
        await gw.stop()


async def test_traces_span_per_request_and_traceparent_to_the_engine(engines: list[FakeEngine]) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gw = await start(engines, {"tracing": True}, provider)
    try:
        async with httpx.AsyncClient() as client:
            parent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
            headers = {"traceparent": parent, "tracestate": "vendor=1"}
            body = {"model": "tiny", "prompt": SECRET}
            assert (await client.post(url(gw) + "/v1/completions", json=body, headers=headers)).is_success
            assert (await client.post(url(gw) + "/v1/completions", json=body)).is_success
        await until(lambda: len(exporter.get_finished_spans()) == 2, what="two spans exported")
    finally:
        await gw.stop()
    child, root = exporter.get_finished_spans()
    # The client's trace continues through the gateway: same trace id, parent = the client's span.
    assert format(child.context.trace_id, "032x") == CLIENT_TRACE
    assert child.parent is not None
    assert format(child.parent.span_id, "016x") == CLIENT_SPAN
    assert child.kind == SpanKind.SERVER
    assert child.name == "POST /v1/completions"
    # The engine's traceparent names the gateway's span (not the client's), in the same trace.
    to_engine = sent(engines[0])["traceparent"]
    assert to_engine == f"00-{CLIENT_TRACE}-{format(child.context.span_id, '016x')}-01"
    assert sent(engines[0])["tracestate"] == "vendor=1"  # the client's vendor state travels on
    attrs = dict(child.attributes or {})
    assert attrs[tracing.ATTR_ENDPOINT] == engines[0].url.split("://")[1]
    assert attrs[tracing.ATTR_POOL] == "p0"
    assert attrs[tracing.ATTR_REASON] == "round-robin"
    assert attrs[tracing.ATTR_STATUS] == 200
    assert attrs[tracing.ATTR_MODEL] == "tiny"
    assert attrs[tracing.ATTR_OUTPUT_TOKENS] == 4
    assert attrs[tracing.ATTR_ATTEMPTS] == 1
    assert attrs[tracing.ATTR_TTFT] > 0
    assert all(SECRET not in str(v) for v in attrs.values())
    # Without a client traceparent the gateway starts a trace, and the engine joins it.
    assert root.parent is None
    to_engine = sent(engines[1])["traceparent"]
    assert to_engine.split("-")[1:3] == [
        format(root.context.trace_id, "032x"),
        format(root.context.span_id, "016x"),
    ]


async def test_pd_hop_is_a_child_span_with_its_own_traceparent() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tracing.OtelTracer(provider)
    with tracing.pd_hop("prefill", {}) as hop:
        assert hop is tracing.NO_HOP  # no request span: a no-op
        assert hop.headers == {}
    span = tracer.start("/v1/completions", {}, "r1")
    tokens = tracing.bind(tracer, span)
    try:
        with tracing.pd_hop("prefill", {tracing.ATTR_PD_PREFILL_ENDPOINT: "10.0.0.9:8000"}) as hop:
            headers = hop.headers
        tracing.set_request_attributes({tracing.ATTR_PD_MODE: "remote"})
    finally:
        tracing.unbind(tokens)
    span.end()
    hop, req = exporter.get_finished_spans()
    assert hop.parent is not None
    assert hop.parent.span_id == req.context.span_id
    assert hop.kind == SpanKind.CLIENT
    assert headers["traceparent"].split("-")[2] == format(hop.context.span_id, "016x")
    assert dict(hop.attributes or {})[tracing.ATTR_PD_PREFILL_ENDPOINT] == "10.0.0.9:8000"
    assert dict(req.attributes or {})[tracing.ATTR_PD_MODE] == "remote"


async def test_a_hop_that_raises_is_an_error_span_and_ends_once() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tracing.OtelTracer(provider)
    span = tracer.start("/v1/completions", {}, "r1")
    tokens = tracing.bind(tracer, span)
    try:
        hop = tracing.NO_HOP

        async def hop_that_times_out() -> None:
            nonlocal hop
            with tracing.pd_hop("prefill", {}) as hop:
                hop.set({tracing.ATTR_PD_OUTCOME: "timeout"})
                raise TimeoutError

        with pytest.raises(TimeoutError):
            await hop_that_times_out()
        hop.end()  # a second end does nothing (no second span, no exception)
        later = tracing.start_hop("decode", {tracing.ATTR_PD_ROLE: "decode"})
        later.set({tracing.ATTR_STATUS: 200})
        later.end()
    finally:
        tracing.unbind(tokens)
    span.end()
    failed, decode, _req = exporter.get_finished_spans()
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description == "TimeoutError"
    assert dict(failed.attributes or {})[tracing.ATTR_PD_OUTCOME] == "timeout"
    assert decode.status.status_code == StatusCode.UNSET
    assert dict(decode.attributes or {}) == {tracing.ATTR_PD_ROLE: "decode", tracing.ATTR_STATUS: 200}


async def test_without_tracing_the_clients_traceparent_passes_unchanged(engines: list[FakeEngine]) -> None:
    gw = await start(engines, {})
    parent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    try:
        async with httpx.AsyncClient() as client:
            body = {"model": "tiny", "prompt": "hi"}
            headers = {"traceparent": parent}
            assert (await client.post(url(gw) + "/v1/completions", json=body, headers=headers)).is_success
    finally:
        await gw.stop()
    assert sent(engines[0])["traceparent"] == parent


def test_tracing_without_the_extra_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # what a missing package looks like to import
    with pytest.raises(ConfigError, match=r"eksinfer\[otel\]") as err:
        RequestObserver(ObservabilityConfig(tracing=True), lambda: [])
    assert err.value.field == "observability.tracing"


def test_gateway_without_tracing_never_imports_opentelemetry() -> None:
    code = (
        "import sys\n"
        "from eksinfer.gateway.config import parse_config\n"
        "from eksinfer.gateway.runtime import build_runtime\n"
        "build_runtime(parse_config({'observability': {'access_log': True}}))\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_access_logger_gets_a_bare_stdout_handler_unless_it_has_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bare = logging.Logger("eksinfer.access.test-bare")
    default_handler(bare)
    bare.info("%s", '{"status":200}')
    assert capsys.readouterr().out == '{"status":200}\n'  # the JSON line alone: no level, no logger name
    assert bare.propagate is False
    owned = logging.Logger("eksinfer.access.test-owned")
    mine = Lines()
    owned.addHandler(mine)
    default_handler(owned)
    assert owned.handlers == [mine]
    assert owned.propagate is True


def test_observability_section_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"observability\.recent_decisions"):
        parse_config({"observability": {"recent_decisions": 0}})
    with pytest.raises(ConfigError, match=r"observability\.access_logs"):
        parse_config({"observability": {"access_logs": True}})


def test_ttft_parts_split_the_first_token_wait_by_where_it_went() -> None:
    rec = RequestRecord("r", "/v1/chat/completions", started=100.0, wall_started=0.0)
    assert rec.ttft_parts() is None  # no first token: nothing to split
    rec.spend("first_token_timeout", 1.5)  # a stalled engine's wait, ended by the watchdog
    rec.spend("backoff", 0.025)
    rec.spend("status", 0.25)  # a 500 from the next one
    rec.upstream_s, rec.ttft_s = 0.5, 2.3  # the answering engine's queue and prefill
    assert rec.ttft_parts() == {
        "first_token_timeout": 1.5,
        "backoff": 0.025,
        "status": 0.25,
        "upstream": 0.5,
        "gateway": pytest.approx(0.025),  # the rest: admission and routing
    }


async def test_observer_books_each_attempt_until_the_first_token() -> None:
    observer = RequestObserver(ObservabilityConfig(status_page=True), lambda: [])
    seen: list[RequestRecord] = []
    observer.finish = lambda rec, span=None: seen.append(rec)  # type: ignore[method-assign]

    async def handler(_request: Any) -> Any:
        observer.attempt()
        observer.attempt_failed("connect")
        observer.waited("backoff", 0.01)
        observer.attempt()
        observer.first_token()
        observer.attempt()  # a continuation after the first token: not part of the TTFT
        observer.attempt_failed("broken")

        class Answer:
            status = 200

        return Answer()

    class Request:
        path = "/v1/chat/completions"
        headers: ClassVar[dict[str, str]] = {}

    await observer.wrap(handler)(Request())  # type: ignore[arg-type]
    (rec,) = seen
    parts = rec.ttft_parts()
    assert parts is not None
    assert set(parts) == {"connect", "backoff", "upstream", "gateway"}  # the late "broken" is not in it
    assert parts["backoff"] == 0.01
    assert rec.ttft_s is not None
    measured = parts["connect"] + parts["upstream"]  # timed by the hooks; the backoff was only declared
    assert 0 <= measured <= rec.ttft_s + 1e-5
    assert parts["gateway"] == pytest.approx(max(0.0, rec.ttft_s - measured - 0.01), abs=1e-5)
