"""The simulator's reasoning output (`--reasoning-parser`) against vLLM 0.32's real chat and Responses paths.

tests/sim/data/vllm-0.32-leftovers.json, key "reasoning": vLLM 0.32.0 (CPU) serving the tiny Llama with two
added tokens `<think>` / `</think>` and `--reasoning-parser qwen3` (see `_about_reasoning`). The text differs
(the simulator splits a free-text answer in half; the real split is where the model wrote `</think>`); the
fields, where they appear, the usage details and the hidden-reasoning behaviour must match.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.sim.conftest import StartCluster
from tests.sim.test_vllm_shapes import shape

REAL: dict[str, Any] = json.loads((Path(__file__).parent / "data" / "vllm-0.32-leftovers.json").read_text())
THINK = REAL["reasoning"]
ASK = [{"role": "user", "content": "Why is the sky blue?"}]
MODEL = "llama-3.1-8b"


def chunks(sse: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in sse.splitlines() if line.startswith("data: {")]


async def post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(url + path, json={"model": "llama-3.1-8b", **body})


async def test_whole_chat_matches_vllms_fields(start: StartCluster) -> None:
    url = (await start(reasoning_parser="qwen3")).urls[0]
    body = {"messages": ASK, "max_tokens": 16, "ignore_eos": True}
    got = (await post(url, "/v1/chat/completions", body)).json()
    hidden = (await post(url, "/v1/chat/completions", {**body, "include_reasoning": False})).json()
    real, real_hidden = THINK["chat_whole"]["body"], THINK["chat_hidden"]["body"]
    assert shape(got) == shape(real)
    assert (
        got["usage"]["completion_tokens_details"].keys() == real["usage"]["completion_tokens_details"].keys()
    )
    for sim, vllm in ((got, real), (hidden, real_hidden)):
        message, real_message = sim["choices"][0]["message"], vllm["choices"][0]["message"]
        assert (message["reasoning"] is None) == (real_message["reasoning"] is None)
        assert isinstance(message["content"], str) == isinstance(real_message["content"], str)
        # the reasoning tokens are counted whether or not they are shown
        assert sim["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    assert real_hidden["usage"] == {**real["usage"]}
    assert hidden["usage"] == got["usage"]


async def test_thinking_to_the_end_has_no_content(start: StartCluster) -> None:
    url = (await start(reasoning_parser="qwen3", natural_output_tokens=64)).urls[0]
    got = (
        await post(url, "/v1/chat/completions", {"messages": ASK, "max_tokens": 8, "ignore_eos": True})
    ).json()
    real = THINK["chat_no_end"]["body"]
    assert real["choices"][0]["message"]["content"] is None
    assert got["choices"][0]["message"]["content"] is None  # 8 tokens, all of them thinking (half of 64)
    assert (
        got["usage"]["completion_tokens_details"]
        == real["usage"]["completion_tokens_details"]
        == {"reasoning_tokens": 8}
    )


async def test_streams_match_vllms_deltas(start: StartCluster) -> None:
    url = (await start(reasoning_parser="qwen3")).urls[0]
    body = {"messages": ASK, "max_tokens": 16, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    for extra, real in (({}, "chat_stream"), ({"include_reasoning": False}, "chat_stream_hidden")):
        got = chunks((await post(url, "/v1/chat/completions", {**body, **extra})).text)
        want = chunks(THINK[real]["body"])

        def kinds(cs: list[dict[str, Any]]) -> list[tuple[str, ...]]:  # runs of the same delta keys
            out: list[tuple[str, ...]] = []
            for c in cs:
                key = tuple(c["choices"][0]["delta"]) if c["choices"] else ("usage",)
                if not out or out[-1] != key:
                    out.append(key)
            return out

        assert kinds(got) == kinds(want), real
        assert got[-1]["usage"].keys() == want[-1]["usage"].keys()


async def test_responses_answer_a_reasoning_item_as_vllm(start: StartCluster) -> None:
    url = (await start(reasoning_parser="qwen3", natural_output_tokens=64)).urls[0]
    got = (
        await post(url, "/v1/responses", {"input": "Why is the sky blue?", "max_output_tokens": 16})
    ).json()
    real = THINK["responses_whole"]["body"]
    assert [o["type"] for o in got["output"]] == [o["type"] for o in real["output"]] == ["reasoning"]
    assert shape(got["output"][0]) == shape(real["output"][0])
    assert got["output"][0]["id"].startswith("rs_")
    assert got["status"] == real["status"] == "incomplete"
    assert got["usage"]["output_tokens_details"] == real["usage"]["output_tokens_details"]  # 16 of 16


async def test_streamed_responses_send_the_reasoning_item_first(start: StartCluster) -> None:
    """A streamed Responses answer from a reasoning model, as vLLM 0.32's stream processor sends it (from
    its source, `responses/streaming_events.py`; no streamed capture): a reasoning item (reasoning_text
    deltas) at output 0, then the message at output 1; its done events and the final response agree. An
    answer that stops while thinking has no message. Parsed by the `openai` SDK."""
    url = (await start(reasoning_parser="qwen3", natural_output_tokens=8)).urls[0]
    sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    try:
        stream = await sdk.responses.create(model=MODEL, input="Why?", max_output_tokens=8, stream=True)
        events = [event async for event in stream]
        short = await sdk.responses.create(model=MODEL, input="Why?", max_output_tokens=2, stream=True)
        cut = [event async for event in short]
        whole = await sdk.responses.create(model=MODEL, input="Why?", max_output_tokens=8)
    finally:
        await sdk.close()
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    thinking = [e for e in events if e.type == "response.reasoning_text.delta"]
    said = [e for e in events if e.type == "response.output_text.delta"]
    assert (len(thinking), len(said)) == (4, 4)  # half of the 8 expected tokens think
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [(e.output_index, e.item.type) for e in added] == [(0, "reasoning"), (1, "message")]  # type: ignore[union-attr]
    assert {e.output_index for e in said} == {1}  # type: ignore[union-attr]
    final = events[-1].response  # type: ignore[union-attr]
    assert [o.type for o in final.output] == [o.type for o in whole.output] == ["reasoning", "message"]
    done = next(e for e in events if e.type == "response.reasoning_text.done")
    assert done.text == final.output[0].content[0].text  # type: ignore[union-attr]
    assert final.usage is not None
    assert final.usage.output_tokens_details.reasoning_tokens == 4
    assert [e.type for e in cut if e.type.startswith("response.output_")] == [
        "response.output_item.added",
        "response.output_item.done",
    ]  # only the reasoning item: it stopped while thinking
    assert [o.type for o in cut[-1].response.output] == ["reasoning"]  # type: ignore[union-attr]
