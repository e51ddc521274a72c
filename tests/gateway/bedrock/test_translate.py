"""OpenAI chat <-> Converse mapping, request and answer, as pure functions (no server)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from eksinfer.gateway.bedrock.answer import StreamTranslator, completion, finish_reason, usage
from eksinfer.gateway.bedrock.translate import to_converse
from eksinfer.gateway.http import RequestRefused

WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_system_roles_and_sampling_fields() -> None:
    body = {
        "model": "llama",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "and again"}]},
            {"role": "assistant", "content": "Bonjour"},
            {"role": "user", "content": "Why?"},
        ],
        "max_completion_tokens": 64,
        "max_tokens": 9,
        "temperature": 0.2,
        "top_p": 1,
        "stop": ["\n\n", ""],
    }
    request = to_converse(body, "model-id")
    assert request == {
        "modelId": "model-id",
        "system": [{"text": "Be brief."}, {"text": "Answer in French."}],
        "messages": [
            {"role": "user", "content": [{"text": "Hello"}, {"text": "and again"}]},
            {"role": "assistant", "content": [{"text": "Bonjour"}]},
            {"role": "user", "content": [{"text": "Why?"}]},
        ],
        # max_completion_tokens wins over the deprecated max_tokens; empty stop strings are left out
        "inferenceConfig": {"maxTokens": 64, "temperature": 0.2, "topP": 1.0, "stopSequences": ["\n\n"]},
    }


def test_tool_calls_and_results_round_trip() -> None:
    body = {
        "model": "llama",
        "messages": [
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "c2",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "4 C"}]},
        ],
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
    }
    request = to_converse(body, "m")
    assert request["messages"][1] == {
        "role": "assistant",
        "content": [
            {"toolUse": {"toolUseId": "c1", "name": "weather", "input": {"city": "Paris"}}},
            {"toolUse": {"toolUseId": "c2", "name": "weather", "input": {"city": "Oslo"}}},
        ],
    }
    # both results come back in one user turn, right after the assistant's calls
    assert request["messages"][2] == {
        "role": "user",
        "content": [
            {"toolResult": {"toolUseId": "c1", "content": [{"text": "18 C"}]}},
            {"toolResult": {"toolUseId": "c2", "content": [{"text": "4 C"}]}},
        ],
    }
    assert request["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "weather",
                    "description": "Weather in a city",
                    "inputSchema": {"json": WEATHER["function"]["parameters"]},  # type: ignore[index]
                }
            }
        ],
        "toolChoice": {"tool": {"name": "weather"}},
    }
    # and the answer's tool call comes back as OpenAI's, arguments as a JSON string
    answer = {
        "output": {"message": {"role": "assistant", "content": [
            {"text": "Checking."},
            {"toolUse": {"toolUseId": "t9", "name": "weather", "input": {"city": "Rome"}}},
        ]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 30, "outputTokens": 12, "totalTokens": 42},
        "metrics": {"latencyMs": 100},
    }  # fmt: skip
    result = completion(answer, model="llama", rid="chatcmpl-1", created=7)
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    assert choice["message"]["tool_calls"] == [
        {"id": "t9", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}}
    ]
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Rome"}
    assert result["usage"] == {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, {"auto": {}}),
        ("auto", {"auto": {}}),
        ("required", {"any": {}}),
        ({"type": "function", "function": {"name": "weather"}}, {"tool": {"name": "weather"}}),
    ],
)
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER], "tool_choice": choice}
    assert to_converse(body, "m")["toolConfig"]["toolChoice"] == expected


def test_tool_choice_none_leaves_tools_out_unless_the_history_uses_them() -> None:
    plain = {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER], "tool_choice": "none"}
    assert "toolConfig" not in to_converse(plain, "m")
    history = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "function": {"name": "weather", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c", "content": "sunny"},
    ]
    kept = to_converse({**plain, "messages": history}, "m")
    assert kept["toolConfig"]["toolChoice"] == {"auto": {}}
    # no tools in the request at all: Bedrock still needs a toolConfig for the history's tool blocks
    bare = to_converse({"messages": history}, "m")
    assert bare["toolConfig"]["tools"] == [
        {"toolSpec": {"name": "weather", "inputSchema": {"json": {"type": "object"}}}}
    ]


def test_empty_tool_result_is_an_empty_json_block() -> None:
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "ping", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "c", "content": ""},
    ]
    request = to_converse({"messages": history}, "m")
    assert request["messages"][1]["content"][0]["toolUse"]["input"] == {}
    assert request["messages"][2]["content"] == [
        {"toolResult": {"toolUseId": "c", "content": [{"json": {}}]}}
    ]


def test_data_url_image_becomes_bytes() -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": url}},
    ]}]}  # fmt: skip
    blocks = to_converse(body, "m")["messages"][0]["content"]
    assert blocks[1] == {"image": {"format": "png", "source": {"bytes": png}}}


def test_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}},
    }
    fmt = to_converse(body, "m")["outputConfig"]["textFormat"]
    assert fmt["type"] == "json_schema"
    assert json.loads(fmt["structure"]["jsonSchema"]["schema"]) == schema
    assert fmt["structure"]["jsonSchema"]["name"] == "out"


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0].content[0]"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}],
                    }
                ]
            },
            "messages[0].content[0].image_url",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{"}}],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"stop": [1]}, "stop"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0]"),
        ({"tool_choice": "sometimes", "tools": [WEATHER]}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_refusals_name_the_field(patch: dict[str, Any], param: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]} | patch
    with pytest.raises(RequestRefused) as err:
        to_converse(body, "m")
    assert (err.value.status, err.value.param) == (400, param)


def test_unsupported_hints_dropped_or_refused() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "seed": 3, "presence_penalty": 0.5, "user": "u1"}
    assert "seed" not in json.dumps(to_converse(body, "m"))
    with pytest.raises(RequestRefused) as err:
        to_converse(body, "m", drop_unsupported=False)
    assert err.value.param == "seed"
    # metadata that never changes an answer passes either way
    assert to_converse({"messages": body["messages"], "user": "u1"}, "m", drop_unsupported=False)


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
        ("malformed_model_output", "stop"),
        ("malformed_tool_use", "stop"),
        ("something_new", "stop"),
    ],
)
def test_stop_reasons(stop_reason: str, finish: str) -> None:
    assert finish_reason(stop_reason) == finish


def test_usage_counts_cache_tokens_in_the_prompt() -> None:
    bedrock = {"inputTokens": 10, "outputTokens": 5, "totalTokens": 1015, "cacheReadInputTokens": 900,
               "cacheWriteInputTokens": 100}  # fmt: skip
    assert usage(bedrock) == {
        "prompt_tokens": 1010,
        "completion_tokens": 5,
        "total_tokens": 1015,
        "prompt_tokens_details": {"cached_tokens": 900},
    }


def test_reasoning_content_is_passed_as_reasoning() -> None:
    answer = {
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "think", "signature": "s"}}}, {"text": "42"},
        ]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3},
    }  # fmt: skip
    message = completion(answer, model="m", rid="r", created=1)["choices"][0]["message"]
    assert (message["content"], message["reasoning"]) == ("42", "think")


def test_stream_events_one_by_one() -> None:
    """Each ConverseStream event gives its chunks: the role waits for the first content, tool calls are
    numbered among tool calls, usage comes last when asked for."""
    t = StreamTranslator(model="llama", rid="r", created=1, include_usage=True)
    deltas: list[list[dict[str, Any]]] = []
    events: list[dict[str, Any]] = [
        {"messageStart": {"role": "assistant"}},
        {"contentBlockDelta": {"delta": {"text": "Let me"}, "contentBlockIndex": 0}},
        {"contentBlockDelta": {"delta": {"text": " check."}, "contentBlockIndex": 0}},
        {"contentBlockStop": {"contentBlockIndex": 0}},
        {
            "contentBlockStart": {
                "start": {"toolUse": {"toolUseId": "t1", "name": "weather"}},
                "contentBlockIndex": 1,
            }
        },
        {"contentBlockDelta": {"delta": {"toolUse": {"input": '{"city": '}}, "contentBlockIndex": 1}},
        {"contentBlockDelta": {"delta": {"toolUse": {"input": '"Oslo"}'}}, "contentBlockIndex": 1}},
        {"contentBlockStop": {"contentBlockIndex": 1}},
        {"messageStop": {"stopReason": "tool_use"}},
        {
            "metadata": {
                "usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7},
                "metrics": {"latencyMs": 9},
            }
        },
    ]
    for event in events:
        deltas.append(t.feed(event))
    assert [len(d) for d in deltas] == [0, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    assert deltas[1][0]["choices"][0]["delta"] == {"role": "assistant", "content": "Let me"}
    assert deltas[2][0]["choices"][0]["delta"] == {"content": " check."}
    assert deltas[4][0]["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "id": "t1", "type": "function", "function": {"name": "weather", "arguments": ""}}
    ]
    arguments = "".join(
        d[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for d in deltas[5:7]
    )
    assert json.loads(arguments) == {"city": "Oslo"}
    assert deltas[5][0]["choices"][0]["delta"]["tool_calls"][0]["index"] == 0  # not contentBlockIndex 1
    assert deltas[8][0]["choices"][0]["finish_reason"] == "tool_calls"
    assert deltas[9][0]["choices"] == []
    assert deltas[9][0]["usage"]["total_tokens"] == 7
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "r" for d in deltas for c in d)
    assert t.finished


def test_stream_without_usage_option_sends_no_usage_chunk() -> None:
    t = StreamTranslator(model="m", rid="r", created=1, include_usage=False)
    assert t.feed({"metadata": {"usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}}}) == []
