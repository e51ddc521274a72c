"""BedrockClient end to end: real botocore (SigV4, event-stream decoding) against the local Bedrock stub.

The stub and the client share one event loop, so a botocore call made on the loop would deadlock the test:
the stub could never answer. Bedrock itself is not reachable here (see conftest.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import traceback
from collections.abc import AsyncIterator
from typing import Any

import botocore.config
import botocore.session
import pytest
from aiohttp import web

from eksinfer.gateway.bedrock.answer import StreamTranslator
from eksinfer.gateway.bedrock.client import BedrockClient
from eksinfer.gateway.bedrock.errors import BedrockError
from eksinfer.gateway.http import RequestRefused
from eksinfer.sim.bedrock import StubFaults, start_stub
from eksinfer.sim.bedrock.stub import RunningStub
from tests.gateway.bedrock.conftest import ACCESS_KEY, MODEL_ID, SECRET_KEY, SESSION_TOKEN, pool
from tests.waiting import DEADLINE_S, LoopWatch, until

CHAT = {
    "model": "llama",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}],
    "max_tokens": 6,
}


async def drain(stream: AsyncIterator[dict[str, Any]], into: list[dict[str, Any]]) -> None:
    """Collects a stream's chunks into `into` (kept when the stream raises)."""
    async for chunk in stream:
        into.append(chunk)


async def test_complete_through_botocore(client: BedrockClient, stub: RunningStub) -> None:
    result = await client.complete(CHAT, "llama")
    assert result["object"] == "chat.completion"
    assert result["model"] == "llama"
    assert result["choices"][0]["message"]["content"] == "b0 b1 b2 b3 b4 b5"
    assert result["choices"][0]["finish_reason"] == "length"  # 6 of the stub's 8 words
    assert result["usage"] == {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}
    seen = stub.stub.recorded[-1]
    assert (seen.model_id, seen.stream) == (MODEL_ID, False)
    assert seen.body["system"] == [{"text": "Be brief."}]
    assert seen.body["inferenceConfig"] == {"maxTokens": 6}
    # signed by botocore with SigV4 for the `bedrock` signing name, region from the config
    assert seen.headers["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert "/us-east-1/bedrock/aws4_request" in seen.headers["Authorization"]
    assert seen.headers["X-Amz-Security-Token"] == SESSION_TOKEN


async def test_stream_translates_each_botocore_event(
    aws_env: None, client: BedrockClient, stub: RunningStub
) -> None:
    """The events botocore decodes from the stub's frames, fed one by one to the translator, are exactly the
    chunks the client streams."""
    body = CHAT | {"stream": True, "stream_options": {"include_usage": True}}

    def raw_events() -> list[dict[str, Any]]:
        session = botocore.session.get_session()
        config = botocore.config.Config(retries={"total_max_attempts": 1})
        boto = session.create_client(
            "bedrock-runtime", region_name="us-east-1", endpoint_url=stub.url, config=config
        )
        request = {"modelId": MODEL_ID, "messages": [{"role": "user", "content": [{"text": "hello there"}]}],
                   "system": [{"text": "Be brief."}], "inferenceConfig": {"maxTokens": 6}}  # fmt: skip
        return list(boto.converse_stream(**request)["stream"])

    events = await asyncio.to_thread(raw_events)
    assert [next(iter(e)) for e in events] == (
        ["messageStart"] + ["contentBlockDelta"] * 6 + ["contentBlockStop", "messageStop", "metadata"]
    )
    translator = StreamTranslator(model="llama", rid="x", created=0, include_usage=True)
    expected = [c for e in events for c in translator.feed(e)]
    chunks = [c async for c in client.stream(body, "llama")]
    strip = [{k: v for k, v in c.items() if k not in ("id", "created")} for c in chunks]
    assert strip == [{k: v for k, v in c.items() if k not in ("id", "created")} for c in expected]
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        == "b0 b1 b2 b3 b4 b5"
    )
    assert len({c["id"] for c in chunks}) == 1
    assert client.inflight == 0


async def test_streamed_tool_call(client: BedrockClient) -> None:
    body = CHAT | {
        "stream": True,
        "tools": [{"type": "function", "function": {"name": "lookup"}}],
        "tool_choice": "required",
    }
    chunks = [c async for c in client.stream(body, "llama")]
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "lookup"
    assert calls[0]["id"].startswith("tooluse_")
    assert "".join(tc["function"]["arguments"] for tc in calls) == '{"q": "hello there"}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("faults", "status", "code", "retryable"),
    [
        (StubFaults(throttle_share=1.0), 429, "bedrock_throttling", True),
        (StubFaults(unavailable_share=1.0), 503, "bedrock_service_unavailable", True),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_errors_before_any_byte_are_not_retried_by_botocore(
    client: BedrockClient,
    stub: RunningStub,
    faults: StubFaults,
    status: int,
    code: str,
    retryable: bool,
    stream: bool,
) -> None:
    stub.stub.faults = faults
    call = drain(client.stream(CHAT, "llama"), []) if stream else client.complete(CHAT, "llama")
    with pytest.raises(BedrockError) as err:
        await call
    assert (err.value.status, err.value.code, err.value.retryable) == (status, code, retryable)
    assert len(stub.stub.recorded) == 1  # botocore's retries are off: the gateway decides
    assert client.inflight == 0


async def test_unknown_model_and_validation(aws_env: None) -> None:
    running = await start_stub(known_models=frozenset({"other"}))
    bedrock = BedrockClient(pool(running.url))
    try:
        with pytest.raises(BedrockError) as err:
            await bedrock.complete(CHAT, "llama")
        assert (err.value.status, err.value.code, err.value.retryable) == (
            502,
            "bedrock_resource_not_found",
            False,
        )
        with pytest.raises(RequestRefused) as refused:
            await bedrock.complete(CHAT, "not-mapped")
        assert (refused.value.status, refused.value.param) == (404, "model")
        assert len(running.stub.recorded) == 1  # the unmapped model never left the gateway
    finally:
        await bedrock.close()
        await running.stop()


@pytest.mark.parametrize(
    ("mode", "code"), [("exception", "bedrock_model_stream_error"), ("reset", "bedrock_connection")]
)
async def test_stream_breaking_mid_way(
    client: BedrockClient, stub: RunningStub, mode: str, code: str
) -> None:
    stub.stub.faults = StubFaults(break_share=1.0, break_after_events=3, break_mode=mode)  # type: ignore[arg-type]
    chunks: list[dict[str, Any]] = []
    with pytest.raises(BedrockError) as err:
        await drain(client.stream(CHAT | {"stream": True}, "llama"), chunks)
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["b0", " b1"]
    assert (err.value.status, err.value.code, err.value.retryable) == (502, code, True)
    await until(lambda: client.inflight == 0, what="slot released")


async def test_stream_breaking_before_content_yields_nothing(
    client: BedrockClient, stub: RunningStub
) -> None:
    """messageStart came, then the stream broke: no chunk was yielded, so a cascade can still move on."""
    stub.stub.faults = StubFaults(break_share=1.0, break_after_events=1)
    chunks: list[dict[str, Any]] = []
    with pytest.raises(BedrockError):
        await drain(client.stream(CHAT | {"stream": True}, "llama"), chunks)
    assert chunks == []


async def test_held_streams_leave_the_loop_free_and_respect_max_concurrency(
    client: BedrockClient, stub: RunningStub
) -> None:
    """Six streams, four slots, the stub holding every first event: four wait inside botocore on worker
    threads while the loop keeps running; two wait for a slot; once released, all six finish."""
    hold = asyncio.Event()
    stub.stub.faults = StubFaults(hold=hold)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def one() -> str:
        chunks = [c async for c in client.stream(CHAT, "llama")]
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])

    tick = asyncio.create_task(ticker())
    tasks = [asyncio.create_task(one()) for _ in range(6)]
    await until(lambda: stub.stub.counts["waiting"] == 4, what="four streams held in the stub")
    start = ticks
    await until(lambda: ticks >= start + 5, what="the loop ticking while botocore waits")
    assert len(stub.stub.recorded) == 4
    assert client.inflight == 4
    assert sum(t.name.startswith("bedrock") for t in threading.enumerate()) <= 4
    hold.set()
    async with asyncio.timeout(DEADLINE_S):
        answers = await asyncio.gather(*tasks)
    tick.cancel()
    assert answers == ["b0 b1 b2 b3 b4 b5"] * 6
    assert len(stub.stub.recorded) == 6
    assert client.inflight == 0


async def test_saturated_pool_answers_429(aws_env: None, stub: RunningStub) -> None:
    bedrock = BedrockClient(pool(stub.url, max_concurrency=1, queue_timeout_s=0.05))
    hold = asyncio.Event()
    stub.stub.faults = StubFaults(hold=hold)
    try:
        first = asyncio.create_task(bedrock.complete(CHAT, "llama"))
        await until(lambda: stub.stub.counts["waiting"] == 1, what="first call held")
        with pytest.raises(BedrockError) as err:
            await bedrock.complete(CHAT, "llama")
        assert (err.value.status, err.value.code, err.value.retryable) == (429, "bedrock_saturated", True)
        hold.set()
        assert (await first)["choices"][0]["finish_reason"] == "length"
    finally:
        await bedrock.close()


async def test_client_leaving_mid_stream_frees_the_slot(client: BedrockClient, stub: RunningStub) -> None:
    stub.stub.faults = StubFaults(token_delay_s=0.05)
    stream = client.stream(CHAT, "llama")
    first = await anext(stream)
    assert first["choices"][0]["delta"]["content"] == "b0"
    await stream.aclose()  # type: ignore[attr-defined]
    assert client.inflight == 0


async def test_event_loop_keeps_ticking_under_streaming_load(
    client: BedrockClient, stub: RunningStub
) -> None:
    """The ticker comparison of tests/gateway/test_proxy.py: a loop ticker against a thread ticker while
    streams run through botocore; a blocking call on the loop shows as a loop gap the thread does not see."""
    stub.stub.faults = StubFaults(first_event_delay_s=0.02, token_delay_s=0.005)
    answers: list[int] = []

    async def worker(watch: LoopWatch) -> None:
        while len(watch.loop_gaps) < 20 or len(answers) < 40:
            answers.append(len([c async for c in client.stream(CHAT, "llama")]))

    async with LoopWatch() as watch, asyncio.timeout(DEADLINE_S * 2):
        await asyncio.gather(*(worker(watch) for _ in range(8)))
    assert answers == [7] * len(answers)  # six words and the finish chunk, every time
    watch.assert_not_blocked()


async def test_connect_refused_is_retryable(aws_env: None) -> None:
    bedrock = BedrockClient(pool("http://127.0.0.1:9", connect_timeout_s=1.0))
    try:
        with pytest.raises(BedrockError) as err:
            await bedrock.complete(CHAT, "llama")
        assert (err.value.status, err.value.code, err.value.retryable) == (502, "bedrock_connect", True)
    finally:
        await bedrock.close()


async def test_no_credentials(aws_env: None, stub: RunningStub, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    bedrock = BedrockClient(pool(stub.url))
    try:
        with pytest.raises(BedrockError) as err:
            await bedrock.complete(CHAT, "llama")
        assert (err.value.status, err.value.code, err.value.retryable) == (
            502,
            "bedrock_no_credentials",
            False,
        )
        assert len(stub.stub.recorded) == 0
    finally:
        await bedrock.close()


async def test_credentials_never_reach_logs_or_errors(
    aws_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Every logger at DEBUG (botocore's included) while calls succeed and fail, one failure coming from a
    server careless enough to echo the signed headers in its message: the access key id, the secret key and
    the session token appear in no log record, error message, repr or traceback."""
    caplog.set_level(logging.DEBUG)

    async def echo(request: web.Request) -> web.Response:
        leak = f"{request.headers.get('Authorization')} {request.headers.get('X-Amz-Security-Token')}"
        return web.json_response({"message": f"signature mismatch: {leak}"}, status=403,
                                 headers={"x-amzn-ErrorType": "AccessDeniedException"})  # fmt: skip

    app = web.Application()
    app.router.add_post("/model/{modelId}/converse", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    leaky_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    running = await start_stub()
    errors: list[BaseException] = []
    try:
        for url, faults in (
            (leaky_url, None),
            (running.url, StubFaults(throttle_share=1.0)),
            (running.url, None),
        ):
            if faults is not None:
                running.stub.faults = faults
            bedrock = BedrockClient(pool(url))
            try:
                await bedrock.complete(CHAT, "llama")
                [c async for c in bedrock.stream(CHAT, "llama")]
            except BedrockError as err:
                errors.append(err)
            finally:
                await bedrock.close()
            running.stub.faults = StubFaults()
    finally:
        await running.stop()
        await runner.cleanup()
    assert len(errors) == 2
    assert {getattr(e, "code", None) for e in errors} == {"bedrock_access_denied", "bedrock_throttling"}
    assert any("signature mismatch" in str(e) for e in errors)
    texts = [caplog.text] + [str(e) for e in errors] + [repr(e) for e in errors]
    texts += ["".join(traceback.format_exception(e)) for e in errors]
    assert caplog.records, "the test must have logged something to check"
    for text in texts:
        for secret in (ACCESS_KEY, SECRET_KEY, SESSION_TOKEN, SESSION_TOKEN[:40]):
            assert secret not in text
