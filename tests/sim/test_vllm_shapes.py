"""The simulator's tool-call, logprobs, Responses and error answers against a real vLLM 0.32's, key for key.

tests/sim/data/vllm-0.32-agent-apis.json was captured from vLLM 0.32.0 (CPU build) serving a tiny
random-weight Llama with `--enable-auto-tool-choice --tool-call-parser hermes` (its `_about` says how).
Values differ (random weights, other ids); statuses, key order, error texts and event order must not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.sim.conftest import StartCluster

REAL: dict[str, Any] = json.loads((Path(__file__).parent / "data" / "vllm-0.32-agent-apis.json").read_text())
SCHEMA = {"type": "object", "properties": {"city": {"enum": ["paris", "rome"]}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": SCHEMA}}]
ASK = [{"role": "user", "content": "weather?"}]
NAMED = {"type": "function", "function": {"name": "weather"}}


def shape(obj: Any) -> Any:
    """Key order only: dicts as [(key, shape)], a list of objects by its first, other values as "v"."""
    if isinstance(obj, dict):
        return [(k, shape(v)) for k, v in obj.items()]
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        return [shape(obj[0])]
    return "v"


async def post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(url + path, json={"model": "llama-3.1-8b", **body})


@pytest.mark.parametrize(("choice", "real"), [("required", "required_whole"), (NAMED, "named_whole")])
async def test_whole_tool_call_answers_match(start: StartCluster, choice: Any, real: str) -> None:
    cluster = await start(tool_call_parser="hermes")
    got = (
        await post(
            cluster.urls[0], "/v1/chat/completions", {"messages": ASK, "tools": TOOLS, "tool_choice": choice}
        )
    ).json()
    want = REAL[real]
    assert shape(got) == shape(want)
    for field in ("finish_reason",):
        assert got["choices"][0][field] == want["choices"][0][field]
    assert got["choices"][0]["message"]["content"] == want["choices"][0]["message"]["content"] == ""
    assert got["choices"][0]["message"]["tool_calls"][0]["id"].startswith("chatcmpl-tool-")


async def test_streamed_tool_call_head_and_pieces_match(start: StartCluster) -> None:
    cluster = await start(tool_call_parser="hermes")
    async with httpx.AsyncClient(timeout=30) as http:
        body = {
            "model": "llama-3.1-8b",
            "messages": ASK,
            "tools": TOOLS,
            "tool_choice": NAMED,
            "stream": True,
        }
        text = (await http.post(cluster.urls[0] + "/v1/chat/completions", json=body)).text
    chunks = [json.loads(b[6:]) for b in text.split("\n\n") if b.startswith("data: {")]
    want = REAL["named_stream_first"]
    assert [shape(c) for c in chunks[:3]] == [shape(c) for c in want]
    head = chunks[1]["choices"][0]["delta"]
    assert head["content"] is None
    assert head["tool_calls"][0]["function"] == {"name": "weather"}
    assert set(chunks[2]["choices"][0]["delta"]["tool_calls"][0]) == {"index", "function"}


@pytest.mark.parametrize(
    ("real", "path", "body"),
    [
        (
            "bad_name",
            "/v1/chat/completions",
            {
                "messages": ASK,
                "tools": TOOLS,
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
        ),
        ("required_no_tools", "/v1/chat/completions", {"messages": ASK, "tool_choice": "required"}),
        (
            "top_without_logprobs",
            "/v1/chat/completions",
            {"messages": ASK, "top_logprobs": 2, "max_tokens": 2},
        ),
        ("top_21", "/v1/chat/completions", {"messages": ASK, "logprobs": True, "top_logprobs": 21}),
        (
            "prompt_logprobs_stream",
            "/v1/chat/completions",
            {"messages": ASK, "prompt_logprobs": 1, "stream": True},
        ),
        (
            "image",
            "/v1/chat/completions",
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}
                ]
            },
        ),
    ],
)
async def test_errors_match(start: StartCluster, real: str, path: str, body: dict[str, Any]) -> None:
    cluster = await start(tool_call_parser="hermes")
    got = await post(cluster.urls[0], path, body)
    want = REAL["errors"][real]
    assert got.status_code == want["error"]["code"]
    assert got.json()["error"] == {
        **want["error"],
        "message": want["error"]["message"].replace("tiny-llama", "llama-3.1-8b"),
    }


async def test_logprobs_shapes_match(start: StartCluster) -> None:
    cluster = await start(tool_call_parser="hermes")
    chat = (
        await post(
            cluster.urls[0],
            "/v1/chat/completions",
            {"messages": ASK, "logprobs": True, "top_logprobs": 2, "max_tokens": 2},
        )
    ).json()
    assert shape(chat["choices"][0]["logprobs"]) == shape(REAL["chat_logprobs"])
    echo = (
        await post(
            cluster.urls[0],
            "/v1/completions",
            {"prompt": "The sea is", "max_tokens": 2, "logprobs": 2, "echo": True, "prompt_logprobs": 1},
        )
    ).json()
    want = REAL["completion_echo_logprobs_choice"]
    assert shape(echo["choices"][0]) == shape(want)
    top = ["id", "object", "created", "model", "choices", "service_tier", "system_fingerprint", "usage"]
    assert list(echo) == [*top, "kv_transfer_params", "ec_transfer_params", "metrics"]  # as captured
    assert echo["choices"][0]["logprobs"]["token_logprobs"][0] is None
    assert echo["choices"][0]["prompt_logprobs"][0] is None
    chat_prompt = (
        await post(
            cluster.urls[0], "/v1/chat/completions", {"messages": ASK, "prompt_logprobs": 1, "max_tokens": 2}
        )
    ).json()
    [(_, entry)] = list(chat_prompt["prompt_logprobs"][1].items())[:1]
    assert list(entry) == list(next(iter(REAL["chat_prompt_logprobs"][1].values())))


async def test_responses_match(start: StartCluster) -> None:
    cluster = await start(tool_call_parser="hermes")
    whole = (await post(cluster.urls[0], "/v1/responses", {"input": "hi", "max_output_tokens": 3})).json()
    assert shape(whole) == shape(REAL["responses_whole"])
    async with httpx.AsyncClient(timeout=30) as http:
        body = {"model": "llama-3.1-8b", "input": "hi", "max_output_tokens": 2, "stream": True}
        text = (await http.post(cluster.urls[0] + "/v1/responses", json=body)).text
    events = []
    for block in text.strip().split("\n\n"):
        kind, data = block.split("\n")
        events.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    assert [k for k, _ in events] == [k for k, _ in REAL["responses_stream"]]
    for (_, got), (_, want) in zip(events, REAL["responses_stream"], strict=True):
        assert shape(got) == shape(want)


async def test_embeddings_on_a_generative_model_is_404_as_vllm(start: StartCluster) -> None:
    cluster = await start(tool_call_parser="hermes")
    got = await post(cluster.urls[0], "/v1/embeddings", {"input": "hi"})
    assert got.status_code == REAL["embeddings_on_generate"]["status"]
    assert got.json() == REAL["embeddings_on_generate"]["body"]
