"""Tool calls and structured output from the simulator, read through the official `openai` SDK.

Shapes follow vLLM 0.32's chat server (see src/eksinfer/sim/toolcalls.py); every generated argument string
and JSON answer is checked against the request's own schema with `jsonschema`.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.sim.conftest import Sdk, StartCluster

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 2},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "hourly": {"type": "boolean"},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
SEARCH = {
    "type": "object",
    "properties": {
        "query": {"type": "string"},
        "filters": {"type": "array", "items": {"$ref": "#/$defs/filter"}, "minItems": 1},
    },
    "required": ["query", "filters"],
    "$defs": {
        "filter": {
            "type": "object",
            "properties": {
                "field": {"type": "string"},
                "value": {"anyOf": [{"type": "number"}, {"type": "null"}]},
            },
            "required": ["field", "value"],
        }
    },
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "search", "parameters": SEARCH}},
]
SCHEMAS = {"get_weather": WEATHER, "search": SEARCH}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def valid_call(name: str, arguments: str) -> None:
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


@pytest.mark.parametrize("seed", range(6))
async def test_required_answers_valid_tool_calls(start: StartCluster, client: Sdk, seed: int) -> None:
    cluster = await start(tool_call_parser="hermes")
    out = await client(cluster.urls[0]).chat.completions.create(
        model="llama-3.1-8b", messages=ASK, tools=TOOLS, tool_choice="required", seed=seed
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == ""
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.type == "function"
        assert call.id.startswith("chatcmpl-tool-")
        valid_call(call.function.name, call.function.arguments)
    assert out.usage is not None
    assert out.usage.completion_tokens > 0


async def test_named_function_is_that_function_with_finish_stop(start: StartCluster, client: Sdk) -> None:
    cluster = await start(tool_call_parser="hermes")
    out = await client(cluster.urls[0]).chat.completions.create(
        model="llama-3.1-8b",
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "search"}},
    )
    choice = out.choices[0]
    assert choice.finish_reason == "stop"  # vLLM (and OpenAI): named calls end with "stop"
    assert choice.message.tool_calls
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.function.name == "search"
    valid_call("search", call.function.arguments)


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
async def test_streamed_tool_call_deltas_reassemble(
    start: StartCluster, client: Sdk, tool_choice: Any
) -> None:
    cluster = await start(tool_call_parser="hermes")
    stream = await client(cluster.urls[0]).chat.completions.create(
        model="llama-3.1-8b",
        messages=ASK,
        tools=TOOLS,
        tool_choice=tool_choice,
        stream=True,
        stream_options={"include_usage": True},
    )
    calls: dict[int, dict[str, str]] = {}
    finishes, heads = [], 0
    async for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                if delta.id is not None:  # the first delta of a call: id, type and name
                    heads += 1
                    assert delta.type == "function"
                    assert delta.function
                    assert delta.function.name
                    calls[delta.index] = {"name": delta.function.name, "arguments": ""}
                assert delta.function is not None
                calls[delta.index]["arguments"] += delta.function.arguments or ""
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    named = isinstance(tool_choice, dict)
    assert finishes == ["stop" if named else "tool_calls"]  # vLLM 0.32: a named call streams "stop"
    assert heads == len(calls) >= 1
    for call in calls.values():
        valid_call(call["name"], call["arguments"])


async def test_auto_needs_the_flag_and_then_calls_some_of_the_time(start: StartCluster, client: Sdk) -> None:
    bare = await start()
    with pytest.raises(openai.BadRequestError) as err:
        await client(bare.urls[0]).chat.completions.create(
            model="llama-3.1-8b", messages=ASK, tools=TOOLS, tool_choice="auto"
        )
    # vLLM 0.32 renderers/online_renderer.py: no parser -> this 400, naming no param
    assert err.value.body == {
        "message": '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    parser_only = await start(tool_call_parser="hermes")  # a parser, no flag: "auto" is answered as text
    text = await client(parser_only.urls[0]).chat.completions.create(
        model="llama-3.1-8b", messages=ASK, tools=TOOLS, tool_choice="auto", max_tokens=5
    )
    assert not text.choices[0].message.tool_calls
    assert text.choices[0].finish_reason == "length"
    enabled = await start(enable_auto_tool_choice=True, tool_call_parser="hermes")
    reasons = []
    for seed in range(12):
        out = await client(enabled.urls[0]).chat.completions.create(
            model="llama-3.1-8b", messages=ASK, tools=TOOLS, tool_choice="auto", seed=seed, max_tokens=300
        )
        choice = out.choices[0]
        reasons.append(choice.finish_reason)
        if choice.finish_reason == "tool_calls":
            assert choice.message.tool_calls
            for call in choice.message.tool_calls:
                valid_call(call.function.name, call.function.arguments)
        else:
            assert not choice.message.tool_calls
    assert "tool_calls" in reasons
    assert set(reasons) - {"tool_calls"}
    again = await client(enabled.urls[0]).chat.completions.create(
        model="llama-3.1-8b", messages=ASK, tools=TOOLS, tool_choice="auto", seed=3, max_tokens=300
    )
    assert again.choices[0].finish_reason == reasons[3]  # seeded


async def test_none_never_calls_and_tool_results_are_accepted(start: StartCluster, client: Sdk) -> None:
    cluster = await start(tool_call_parser="hermes")
    conversation: list[Any] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "chatcmpl-tool-1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "chatcmpl-tool-1", "content": '{"temperature_c": 18}'},
    ]
    for seed in range(4):
        out = await client(cluster.urls[0]).chat.completions.create(
            model="llama-3.1-8b",
            messages=conversation,
            tools=TOOLS,
            tool_choice="none",
            seed=seed,
            max_tokens=8,
        )
        assert out.choices[0].message.tool_calls is None
        assert out.choices[0].finish_reason == "length"
        assert out.choices[0].message.content


@pytest.mark.parametrize(
    ("tool_choice", "message"),
    [
        (
            {"type": "function", "function": {"name": "nope"}},
            "does not match any of the specified `tools` (parameter=tool_choice)",
        ),
        ("sometimes", "tool_choice must be"),
    ],
)
async def test_bad_tool_choice_is_a_400_naming_the_field(
    start: StartCluster, client: Sdk, tool_choice: Any, message: str
) -> None:
    cluster = await start(tool_call_parser="hermes")
    with pytest.raises(openai.BadRequestError) as info:
        await client(cluster.urls[0]).chat.completions.create(
            model="llama-3.1-8b", messages=ASK, tools=TOOLS, tool_choice=tool_choice
        )
    assert message in str(info.value)
    assert info.value.body is not None
    assert info.value.body["param"] == "tool_choice"


async def test_required_without_tools_is_vllms_400(start: StartCluster, client: Sdk) -> None:
    cluster = await start(tool_call_parser="hermes")
    with pytest.raises(openai.BadRequestError, match="`tools` must be set"):
        await client(cluster.urls[0]).chat.completions.create(
            model="llama-3.1-8b", messages=ASK, tool_choice="required"
        )


@pytest.mark.parametrize("seed", range(4))
async def test_response_format_json_schema_validates(start: StartCluster, client: Sdk, seed: int) -> None:
    cluster = await start(tool_call_parser="hermes")
    out = await client(cluster.urls[0]).chat.completions.create(
        model="llama-3.1-8b",
        messages=ASK,
        seed=seed,
        response_format={"type": "json_schema", "json_schema": {"name": "search", "schema": SEARCH}},
    )
    assert out.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(out.choices[0].message.content or ""), SEARCH)


async def test_json_object_and_structured_outputs_choice(start: StartCluster, client: Sdk) -> None:
    cluster = await start(tool_call_parser="hermes")
    sdk = client(cluster.urls[0])
    out = await sdk.chat.completions.create(
        model="llama-3.1-8b", messages=ASK, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(out.choices[0].message.content or ""), dict)
    picked = await sdk.chat.completions.create(
        model="llama-3.1-8b",
        messages=ASK,
        extra_body={"structured_outputs": {"choice": ["sunny", "rainy"]}},
    )
    assert picked.choices[0].message.content in ("sunny", "rainy")
    streamed = await sdk.chat.completions.create(
        model="llama-3.1-8b", messages=ASK, stream=True, extra_body={"structured_outputs": {"json": WEATHER}}
    )
    text = "".join([c.choices[0].delta.content or "" async for c in streamed if c.choices])
    jsonschema.validate(json.loads(text), WEATHER)


async def test_unsatisfiable_or_broken_schema_is_a_400(start: StartCluster, client: Sdk) -> None:
    cluster = await start(tool_call_parser="hermes")
    sdk = client(cluster.urls[0])
    with pytest.raises(openai.BadRequestError, match="invalid JSON schema"):
        await sdk.chat.completions.create(
            model="llama-3.1-8b",
            messages=ASK,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}},
        )


async def test_max_tokens_cuts_structured_output_short(start: StartCluster, client: Sdk) -> None:
    cluster = await start(tool_call_parser="hermes")
    out = await client(cluster.urls[0]).chat.completions.create(
        model="llama-3.1-8b", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=3
    )
    assert out.choices[0].finish_reason == "length"
    assert out.choices[0].message.tool_calls is None
    assert out.usage is not None
    assert out.usage.completion_tokens == 3


async def test_image_parts_on_a_text_only_model(start: StartCluster, client: Sdk) -> None:
    cluster = await start(tool_call_parser="hermes")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError, match="is not a multimodal model"):
        await client(cluster.urls[0]).chat.completions.create(
            model="llama-3.1-8b",
            messages=[{"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}],
        )


@pytest.mark.parametrize(
    ("choice", "desc"),
    [
        ("required", '"required"'),
        ({"type": "function", "function": {"name": "get_weather"}}, 'function "get_weather"'),
    ],
)
async def test_required_and_named_need_a_tool_parser(
    start: StartCluster, client: Sdk, choice: Any, desc: str
) -> None:
    """vLLM 0.32 refuses a tool choice it would have to parse when no --tool-call-parser is set."""
    bare = await start()
    with pytest.raises(openai.BadRequestError) as err:
        await client(bare.urls[0]).chat.completions.create(
            model="llama-3.1-8b", messages=ASK, tools=TOOLS, tool_choice=choice
        )
    assert err.value.body == {
        "message": f"tool_choice={desc} requires --tool-call-parser to be set",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
