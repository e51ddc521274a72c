"""The agent-platform APIs through the gateway (in-process, real router) to two real vLLM 0.32 servers.

scripts/test-live.sh serves them with `--enable-auto-tool-choice --tool-call-parser hermes`. The tiny model's
weights are random, so these tests check what the gateway and a client rely on (statuses, shapes, finish
reasons, error texts, event order), not the generated values; the same checks run against the simulator in
tests/sim/test_vllm_shapes.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from eksinfer.gateway.config import parse_config
from eksinfer.gateway.runtime import GatewayRuntime, build_runtime
from tests.live.conftest import LiveServer
from tests.waiting import until

pytestmark = pytest.mark.live

MODEL = "tiny-llama"
SCHEMA = {"type": "object", "properties": {"city": {"enum": ["paris", "rome"]}}, "required": ["city"]}
TOOLS: Any = [{"type": "function", "function": {"name": "weather", "parameters": SCHEMA}}]
ASK: Any = [{"role": "user", "content": "weather?"}]


@pytest.fixture
async def gateway(live_servers: list[LiveServer]) -> AsyncIterator[str]:
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "route_headers": True},
            "endpoints": {"static": [{"url": s.url, "models": [MODEL]} for s in live_servers]},
            "routing": {"preset": "approx-prefix"},
        }
    )
    runtime: GatewayRuntime = build_runtime(config)
    await runtime.start()
    try:
        yield f"http://127.0.0.1:{runtime.port}"
    finally:
        await runtime.stop()


@pytest.fixture
async def sdk(gateway: str) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=120)
    yield client
    await client.close()


async def test_tool_calls_through_the_gateway(sdk: openai.AsyncOpenAI) -> None:
    required = await sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=300
    )
    named = await sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "weather"}},
        max_tokens=300,
    )
    for out, finish in ((required, "tool_calls"), (named, "stop")):
        choice = out.choices[0]
        if choice.finish_reason == "length":  # random weights may not close the call: vLLM returns text
            assert choice.message.tool_calls is None
            continue
        assert choice.finish_reason == finish
        assert choice.message.content == ""
        assert choice.message.tool_calls
        assert choice.message.tool_calls[0].function.name == "weather"
        assert choice.message.tool_calls[0].id.startswith("chatcmpl-tool-")


async def test_logprobs_n_and_media_through_the_gateway(sdk: openai.AsyncOpenAI) -> None:
    out = await sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,
        max_tokens=3,
        logprobs=True,
        top_logprobs=2,
        n=2,
        extra_body={"ignore_eos": True},  # random weights may end early; the shape wants 3 tokens
    )
    assert [c.index for c in out.choices] == [0, 1]
    for choice in out.choices:
        assert choice.logprobs is not None
        assert choice.logprobs.content is not None
        assert len(choice.logprobs.content) == 3
        assert all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in choice.logprobs.content)
    with pytest.raises(openai.BadRequestError, match="tiny-llama is not a multimodal model"):
        await sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}],
        )


async def test_responses_and_pooling_routes_through_the_gateway(
    gateway: str, sdk: openai.AsyncOpenAI
) -> None:
    whole = await sdk.responses.create(model=MODEL, input="hi", max_output_tokens=3)
    assert whole.usage is not None
    assert whole.usage.output_tokens <= 3
    stream = await sdk.responses.create(model=MODEL, input="hi", max_output_tokens=3, stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-1] == "response.completed"
    async with httpx.AsyncClient(timeout=60) as http:
        embed = await http.post(gateway + "/v1/embeddings", json={"model": MODEL, "input": "hi"})
        tok = await http.post(gateway + "/tokenize", json={"model": MODEL, "prompt": "hello"})
    assert embed.status_code == 404  # a generative model serves no pooling route; the gateway forwarded
    assert embed.json() == {"detail": "Not Found"}
    assert "preset=load" in embed.headers["x-eksinfer-route"]
    assert tok.status_code == 200
    assert tok.json()["count"] == len(tok.json()["tokens"])


async def test_leftover_apis_through_the_gateway(sdk: openai.AsyncOpenAI, gateway: str) -> None:
    """structured_outputs regex, best_of (ignored by 0.32), n with a seed, Responses function tools, and
    the score route forwarded (a generative model has none: vLLM's 404), all through the gateway."""
    regex = r"[a-z]{3}-[0-9]{2}"
    guided = await sdk.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=40, extra_body={"structured_outputs": {"regex": regex}}
    )
    content = guided.choices[0].message.content or ""
    assert re.fullmatch(regex, content), content
    best = await sdk.completions.create(model=MODEL, prompt="Hello there", max_tokens=4, n=3, best_of=2)
    assert len(best.choices) == 3
    seeded = [
        [c.text for c in (await sdk.completions.create(
            model=MODEL, prompt="Hello", max_tokens=6, n=3, seed=7, extra_body={"ignore_eos": True}
        )).choices]
        for _ in range(2)
    ]  # fmt: skip
    assert seeded[0] == seeded[1]
    assert len(set(seeded[0])) == 3
    tools: Any = [{"type": "function", "name": "weather", "parameters": SCHEMA}]
    resp = await sdk.responses.create(
        model=MODEL, input="weather?", tools=tools, tool_choice="required", max_output_tokens=200
    )
    assert resp.output
    if resp.status == "incomplete":  # random weights may not close a call in 200 tokens: that one is text
        assert resp.incomplete_details is not None
        assert resp.incomplete_details.reason == "max_output_tokens"
        assert {item.type for item in resp.output} <= {"message", "function_call"}
    else:
        assert all(item.type == "function_call" for item in resp.output)
    async with httpx.AsyncClient(timeout=120) as http:
        empty = await http.post(
            gateway + "/v1/chat/completions",
            json={"model": MODEL, "messages": ASK, "structured_outputs": {"grammar": " "}},
        )
        score = await http.post(gateway + "/score", json={"model": MODEL, "text_1": "a", "text_2": "b"})
    assert empty.status_code == 400
    assert empty.json()["error"]["message"] == "structured_outputs.grammar cannot be an empty string"
    assert score.status_code == 404
    assert "preset=load" in score.headers["x-eksinfer-route"]


async def test_stored_responses_through_the_gateway(live_servers: list[LiveServer]) -> None:
    """Responses `store` on two real vLLM 0.32 servers (VLLM_ENABLE_RESPONSES_API_STORE=1, as
    scripts/test-live.sh starts them): each server keeps its own store, and round-robin routing sends
    consecutive requests to different servers, so every follow-up, GET and cancel below reaches the server
    that stored its response only because the gateway pins it there. A second gateway, which never saw the
    ids, finds them by asking both servers."""
    urls = [s.url for s in live_servers]

    async def gateway() -> GatewayRuntime:
        config = parse_config(
            {
                "server": {"host": "127.0.0.1", "port": 0, "route_headers": True},
                "endpoints": {"static": [{"url": u, "models": [MODEL]} for u in urls]},
                "routing": {"preset": "round-robin"},
            }
        )
        runtime = build_runtime(config)
        await runtime.start()
        return runtime

    first = await gateway()
    sdk = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{first.port}/v1", api_key="unused", max_retries=0, timeout=120
    )
    try:
        starts = [
            await sdk.responses.with_raw_response.create(model=MODEL, input=f"story {i}", max_output_tokens=4)
            for i in range(2)
        ]
        assert len({raw.headers["x-eksinfer-endpoint"] for raw in starts}) == 2  # one per server
        last = [raw.parse().id for raw in starts]
        for turn in range(4):
            for i in range(2):
                if turn % 2:
                    stream = await sdk.responses.create(
                        model=MODEL,
                        input="go on",
                        previous_response_id=last[i],
                        max_output_tokens=4,
                        stream=True,
                    )
                    events = [event async for event in stream]
                    assert events[0].type == "response.created"
                    assert events[-1].type == "response.completed"
                    last[i] = events[-1].response.id  # type: ignore[union-attr]
                else:
                    out = await sdk.responses.create(
                        model=MODEL, input="go on", previous_response_id=last[i], max_output_tokens=4
                    )
                    assert out.previous_response_id == last[i]
                    last[i] = out.id
        for rid in last:
            assert (await sdk.responses.retrieve(rid)).id == rid
            with pytest.raises(openai.BadRequestError) as refused:
                await sdk.responses.cancel(rid)
            assert "Cannot cancel a synchronous response." in str(refused.value)
        with pytest.raises(openai.NotFoundError) as missing:
            await sdk.responses.retrieve("resp_doesnotexist")
        assert "Response with id 'resp_doesnotexist' not found." in str(missing.value)
        job = await sdk.responses.create(model=MODEL, input="later", background=True, max_output_tokens=4)
        assert job.status == "queued"

        async def finished() -> bool:
            return (await sdk.responses.retrieve(job.id)).status in ("completed", "incomplete")

        await until(finished, timeout_s=120, what="the background response finished on its server")
        # a streamed background response, then its events replayed by GET ?stream=true from event 3 on
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{first.port}", timeout=120) as http:
            body = {"model": MODEL, "input": "hi", "background": True, "stream": True, "max_output_tokens": 4}
            streamed = await http.post("/v1/responses", json=body)
            kinds = re.findall(r"^event: (\S+)$", streamed.text, re.M)
            created = json.loads(streamed.text.split("data: ", 1)[1].split("\n", 1)[0])
            replays = [
                await http.get(
                    f"/v1/responses/{created['response']['id']}",
                    params={"stream": "true", "starting_after": "2"},
                )
                for _ in range(2)  # round-robin would send one of the two to the other server
            ]
        assert (kinds[0], kinds[-1]) == ("response.created", "response.completed")
        for replay in replays:
            assert replay.status_code == 200
            assert re.findall(r"^event: (\S+)$", replay.text, re.M) == kinds[3:]
    finally:
        await sdk.close()
        await first.stop()
    second = await gateway()
    sdk = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{second.port}/v1", api_key="unused", max_retries=0, timeout=120
    )
    try:
        for rid in last:
            out = await sdk.responses.create(
                model=MODEL, input="the end", previous_response_id=rid, max_output_tokens=4
            )
            assert out.previous_response_id == rid
        assert (await sdk.responses.retrieve(job.id)).id == job.id
    finally:
        await sdk.close()
        await second.stop()
