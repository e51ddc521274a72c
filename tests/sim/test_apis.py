"""`/v1/embeddings` (pooling runner) and `/v1/responses` from the simulator, through the `openai` SDK."""

from __future__ import annotations

import math
from typing import Any

import httpx
import openai
import pytest

from eksinfer.catalog import get_model
from tests.sim.conftest import Sdk, StartCluster


async def test_embeddings_are_unit_vectors_of_the_hidden_size(start: StartCluster, client: Sdk) -> None:
    cluster = await start(runner="pooling")
    sdk = client(cluster.urls[0])
    hidden = get_model("llama-3.1-8b").hidden_size
    out = await sdk.embeddings.create(
        model="llama-3.1-8b", input=["the sea", "the land", "the sea"]
    )  # base64
    as_float = await sdk.embeddings.create(model="llama-3.1-8b", input="the sea", encoding_format="float")
    vectors = [d.embedding for d in out.data]
    assert [d.index for d in out.data] == [0, 1, 2]
    assert all(len(v) == hidden for v in vectors)
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-5) for v in vectors)
    assert vectors[0] == vectors[2]  # deterministic
    assert vectors[0] != vectors[1]
    assert as_float.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)  # base64 is float32
    assert out.usage.prompt_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError, match="matryoshka"):
        await sdk.embeddings.create(model="llama-3.1-8b", input="x", dimensions=8)


async def test_runner_decides_which_routes_exist(start: StartCluster) -> None:
    pooling = await start(runner="pooling")
    generate = await start()
    async with httpx.AsyncClient() as http:
        chat = await http.post(pooling.urls[0] + "/v1/chat/completions", json={"messages": []})
        embed = await http.post(generate.urls[0] + "/v1/embeddings", json={"input": "x"})
    assert chat.status_code == 404
    assert embed.status_code == 404
    assert embed.json() == {"detail": "Not Found"}


async def test_responses_whole_and_streamed(start: StartCluster, client: Sdk) -> None:
    cluster = await start()
    sdk = client(cluster.urls[0])
    whole = await sdk.responses.create(
        model="llama-3.1-8b", input="Tell me about the sea", instructions="Be brief.", max_output_tokens=6
    )
    assert whole.status == "incomplete"
    assert whole.incomplete_details is not None
    assert whole.incomplete_details.reason == "max_output_tokens"
    assert whole.usage is not None
    assert whole.usage.output_tokens == 6
    assert whole.output_text
    stream = await sdk.responses.create(
        model="llama-3.1-8b",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Tell me about the sea"}]}],
        instructions="Be brief.",
        max_output_tokens=6,
        stream=True,
    )
    kinds, deltas, sequence = [], "", []
    final = None
    async for event in stream:
        kinds.append(event.type)
        sequence.append(event.sequence_number)
        if event.type == "response.output_text.delta":
            deltas += event.delta
        if event.type == "response.completed":
            final = event.response
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds.count("response.output_text.delta") == 6
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",  # vLLM sends it for an incomplete answer too
    ]
    assert sequence == list(range(len(sequence)))
    assert final is not None
    assert final.output_text == deltas == whole.output_text  # the same prompt either way: same text


async def test_responses_bad_input_is_a_400(start: StartCluster) -> None:
    cluster = await start()
    async with httpx.AsyncClient() as http:
        bad = await http.post(cluster.urls[0] + "/v1/responses", json={"input": 5})
        tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
        auto = await http.post(cluster.urls[0] + "/v1/responses", json={"input": "hi", "tools": tools})
        builtin = await http.post(
            cluster.urls[0] + "/v1/responses",
            json={"input": "hi", "tools": [{"type": "web_search_preview"}], "tool_choice": "none"},
        )
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "input"
    # tool_choice defaults to "auto", which needs --enable-auto-tool-choice and a parser (as in chat)
    assert auto.status_code == 400
    assert "--enable-auto-tool-choice" in auto.json()["error"]["message"]
    assert builtin.status_code == 400  # built-in tools need vLLM's tool server: not modelled, said plainly
    assert builtin.json()["error"]["param"] == "tools"


async def test_reasoning_parser_separates_thinking_from_the_answer(start: StartCluster, client: Sdk) -> None:
    cluster = await start(reasoning_parser="qwen3")
    sdk = client(cluster.urls[0])
    whole = await sdk.chat.completions.create(
        model="llama-3.1-8b", messages=[{"role": "user", "content": "why?"}], max_tokens=8
    )
    message: Any = whole.choices[0].message
    assert message.reasoning  # the first half: vLLM's `reasoning` field
    assert message.content
    stream = await sdk.chat.completions.create(
        model="llama-3.1-8b", messages=[{"role": "user", "content": "why?"}], max_tokens=8, stream=True
    )
    thought, answer, order = "", "", []
    async for chunk in stream:
        for c in chunk.choices:
            delta: Any = c.delta
            piece = (delta.model_extra or {}).get("reasoning")
            if piece:
                thought += piece
                order.append("r")
            if delta.content:
                answer += delta.content
                order.append("c")
    assert (thought, answer) == (message.reasoning, message.content)  # same prompt, same seed
    assert order == sorted(order, reverse=True)  # all reasoning before any content
    plain = await start()
    out = await client(plain.urls[0]).chat.completions.create(
        model="llama-3.1-8b", messages=[{"role": "user", "content": "why?"}], max_tokens=8
    )
    assert (out.choices[0].message.model_extra or {}).get("reasoning") is None


async def test_reasoning_tokens_usage_and_include_reasoning(start: StartCluster, client: Sdk) -> None:
    """vLLM 0.32's chat path with a reasoning parser (entrypoints/openai/chat_completion/serving.py): usage
    has `completion_tokens_details: {"reasoning_tokens": n}` (whole and in the final streamed usage), and
    `include_reasoning: false` drops the reasoning; Responses gets a `reasoning` item first."""
    cluster = await start(reasoning_parser="qwen3")
    sdk = client(cluster.urls[0])
    ask: Any = [{"role": "user", "content": "why?"}]
    whole = await sdk.chat.completions.create(model="llama-3.1-8b", messages=ask, max_tokens=8, n=2)
    assert whole.usage is not None
    assert whole.usage.completion_tokens_details is not None
    assert whole.usage.completion_tokens_details.reasoning_tokens == 8  # 4 of 8 per choice
    hidden = await sdk.chat.completions.create(
        model="llama-3.1-8b", messages=ask, max_tokens=8, extra_body={"include_reasoning": False}
    )
    assert (hidden.choices[0].message.model_extra or {}).get("reasoning") is None
    assert hidden.choices[0].message.content == whole.choices[0].message.content
    stream = await sdk.chat.completions.create(
        model="llama-3.1-8b",
        messages=ask,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"include_reasoning": False},
    )
    chunks = [c async for c in stream]
    assert not any((c.delta.model_extra or {}).get("reasoning") for ch in chunks for c in ch.choices)
    assert (
        "".join(c.delta.content or "" for ch in chunks for c in ch.choices)
        == hidden.choices[0].message.content
    )
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 4
    resp = await sdk.responses.create(model="llama-3.1-8b", input="why?", max_output_tokens=8)
    assert [item.type for item in resp.output] == ["reasoning", "message"]
    assert resp.usage is not None
    assert resp.usage.output_tokens_details.reasoning_tokens == 4
