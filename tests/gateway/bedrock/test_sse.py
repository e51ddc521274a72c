"""The Bedrock tier's HTTP answer (`sse.respond`) as the openai SDK sees it: JSON, SSE, errors before and
after the commit point."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
from aiohttp import web

from eksinfer.gateway.bedrock.client import BedrockClient
from eksinfer.gateway.bedrock.errors import BedrockError
from eksinfer.gateway.bedrock.sse import respond
from eksinfer.gateway.http import error_response
from eksinfer.sim.bedrock import StubFaults
from eksinfer.sim.bedrock.stub import RunningStub

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def api(client: BedrockClient) -> AsyncIterator[openai.AsyncOpenAI]:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        try:
            return await respond(request, client, body, body["model"], headers={"x-eksinfer-pool": "bedrock"})
        except BedrockError as err:
            return error_response(err.status, str(err), code=err.code)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    sdk = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)
    yield sdk
    await sdk.close()
    await runner.cleanup()


async def test_plain_and_streamed_answers(api: openai.AsyncOpenAI) -> None:
    raw = await api.chat.completions.with_raw_response.create(model="llama", messages=MESSAGES, max_tokens=3)  # type: ignore[arg-type]
    assert raw.headers["x-eksinfer-pool"] == "bedrock"
    answer = raw.parse()
    assert answer.choices[0].message.content == "b0 b1 b2"
    assert answer.choices[0].finish_reason == "length"
    stream = await api.chat.completions.create(
        model="llama",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "b0 b1 b2 b3 b4 b5 b6 b7"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


async def test_error_before_the_first_chunk_is_a_status(api: openai.AsyncOpenAI, stub: RunningStub) -> None:
    stub.stub.faults = StubFaults(throttle_share=1.0)
    with pytest.raises(openai.RateLimitError):
        await api.chat.completions.create(model="llama", messages=MESSAGES, stream=True)  # type: ignore[arg-type]


async def test_error_after_the_first_chunk_is_an_error_event(
    api: openai.AsyncOpenAI, stub: RunningStub
) -> None:
    stub.stub.faults = StubFaults(break_share=1.0, break_after_events=3)
    stream = await api.chat.completions.create(model="llama", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    texts: list[str] = []

    async def read() -> None:
        async for chunk in stream:
            texts.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as err:
        await read()
    await stream.close()
    assert texts == ["b0", " b1"]
    assert "modelStreamErrorException" in err.value.message
