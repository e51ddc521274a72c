"""Responses API function tools and stored responses (`previous_response_id`) through the `openai` SDK, and
key for key against vLLM 0.32's captured answers (tests/sim/data/vllm-0.32-leftovers.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.sim.conftest import Sdk, StartCluster, set_slow_token_s
from tests.sim.test_vllm_shapes import shape
from tests.waiting import until

REAL: dict[str, Any] = json.loads((Path(__file__).parent / "data" / "vllm-0.32-leftovers.json").read_text())
GEN = REAL["generate"]
MODEL = "llama-3.1-8b"
PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS: list[Any] = [
    {"type": "function", "name": "weather", "description": "Weather for a city", "parameters": PARAMS}
]


def events(sse: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in sse.splitlines() if line.startswith("data: ")]


async def test_required_tool_answers_function_call_items(start: StartCluster, client: Sdk) -> None:
    sdk = client((await start(enable_auto_tool_choice=True, tool_call_parser="hermes")).urls[0])
    out = await sdk.responses.create(
        model=MODEL, input="Weather in Paris?", tools=TOOLS, tool_choice="required", max_output_tokens=200
    )
    calls = [item for item in out.output if item.type == "function_call"]
    assert calls
    assert len(calls) == len(out.output)  # no message item: vLLM leaves out empty content
    for call in calls:
        assert call.name == "weather"
        assert call.call_id.startswith("chatcmpl-tool-")
        assert call.id.startswith("fc_")
        jsonschema.validate(json.loads(call.arguments), PARAMS)
    assert out.status == "completed"
    named = await sdk.responses.create(
        model=MODEL,
        input="Weather?",
        tools=TOOLS,
        tool_choice={"type": "function", "name": "weather"},
        max_output_tokens=200,
    )
    assert [item.type for item in named.output] == ["function_call"]
    assert named.tool_choice.model_dump(exclude_none=True) == {"name": "weather", "type": "function"}


async def test_whole_answer_has_vllms_keys(start: StartCluster) -> None:
    cluster = await start(enable_auto_tool_choice=True, tool_call_parser="hermes")
    want = GEN["resp_tools_required"]
    async with httpx.AsyncClient(timeout=30) as http:
        got = (
            await http.post(
                cluster.urls[0] + "/v1/responses", json={**want["request"]["body"], "model": MODEL}
            )
        ).json()
    assert shape(got) == shape(want["body"])
    assert (got["tool_choice"], got["tools"]) == (want["body"]["tool_choice"], want["body"]["tools"])


async def test_streamed_function_call_events_match_vllm(start: StartCluster) -> None:
    cluster = await start(enable_auto_tool_choice=True, tool_call_parser="hermes")
    body = {"model": MODEL, "input": "Weather in Paris?", "tools": TOOLS, "tool_choice": "required",
            "max_output_tokens": 200, "stream": True}  # fmt: skip
    async with httpx.AsyncClient(timeout=30) as http:
        got = events((await http.post(cluster.urls[0] + "/v1/responses", json=body)).text)
    want = events(GEN["resp_tools_required_stream"]["body"])

    def kinds(evs: list[dict[str, Any]]) -> list[str]:  # runs of deltas collapsed (lengths differ)
        out: list[str] = []
        for e in evs:
            if not (out and out[-1] == e["type"] == "response.function_call_arguments.delta"):
                out.append(e["type"])
        return out

    one_call = [e for e in got if e.get("output_index", 0) == 0]
    assert kinds(one_call) == kinds(want)
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    fc = "response.function_call_arguments"
    for kind in ("response.output_item.added", f"{fc}.delta", f"{fc}.done", "response.output_item.done",
                 "response.completed"):  # fmt: skip
        assert shape(next(e for e in got if e["type"] == kind)) == shape(
            next(e for e in want if e["type"] == kind)
        )
    done = [e for e in got if e["type"] == "response.function_call_arguments.done"]
    pieces = [
        "".join(e["delta"] for e in got if e.get("item_id") == d["item_id"] and "delta" in e) for d in done
    ]
    assert pieces == [d["arguments"] for d in done]  # the deltas add up to each call's arguments
    final = got[-1]["response"]["output"]
    assert [(o["id"], o["arguments"]) for o in final] == [(d["item_id"], d["arguments"]) for d in done]


async def test_tool_results_in_the_input_are_accepted(start: StartCluster, client: Sdk) -> None:
    sdk = client((await start()).urls[0])
    body = GEN["resp_tool_result_input"]["request"]["body"]
    out = await sdk.responses.create(
        model=MODEL, input=body["input"], tools=TOOLS, tool_choice="none", max_output_tokens=6
    )
    assert out.output_text
    assert out.tool_choice == "none"


async def test_previous_response_id_continues_a_stored_response(start: StartCluster, client: Sdk) -> None:
    cluster = await start(enable_responses_store=True)
    sdk = client(cluster.urls[0])
    first = await sdk.responses.create(model=MODEL, input="Remember the word kiwi.", max_output_tokens=8)
    fetched = await sdk.responses.retrieve(first.id)
    assert fetched.model_dump() == first.model_dump()
    nxt = await sdk.responses.create(
        model=MODEL, input="Which word?", max_output_tokens=8, previous_response_id=first.id
    )
    alone = await sdk.responses.create(model=MODEL, input="Which word?", max_output_tokens=8, store=False)
    assert nxt.previous_response_id == first.id
    assert nxt.usage is not None
    assert alone.usage is not None
    assert first.usage is not None
    # the conversation carries the first input and answer: more prompt, and its prefix comes from the cache
    assert nxt.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens
    with pytest.raises(openai.BadRequestError) as cancel:  # finished: vLLM's 400 for a synchronous response
        await sdk.responses.cancel(first.id)
    assert cancel.value.body == {
        "message": "Cannot cancel a synchronous response.",
        "type": "invalid_request_error",
        "param": "response_id",
        "code": 400,
    }
    with pytest.raises(openai.NotFoundError) as err:
        await sdk.responses.retrieve(alone.id)  # store=False: not kept
    assert err.value.body == json.loads(json.dumps(GEN["resp_store_false_get"]["body"]["error"]).replace(
        GEN["resp_store_false"]["body"]["id"], alone.id))  # fmt: skip


@pytest.mark.parametrize("store", [True, False])
async def test_unknown_previous_response_is_vllms_404(start: StartCluster, store: bool) -> None:
    cluster = await start(enable_responses_store=store)
    async with httpx.AsyncClient(timeout=30) as http:
        prev = await http.post(
            cluster.urls[0] + "/v1/responses",
            json={**GEN["resp_prev_unknown"]["request"]["body"], "model": MODEL},
        )
        get = await http.get(cluster.urls[0] + "/v1/responses/resp_doesnotexist")
    assert (prev.status_code, prev.json()) == (404, GEN["resp_prev_unknown"]["body"])
    assert (get.status_code, get.json()) == (404, GEN["resp_get_unknown"]["body"])


async def test_background_responses_are_queued_then_cancelled_or_completed(
    start: StartCluster, client: Sdk
) -> None:
    """`background: true` as vLLM 0.32 serves it: answered at once with the stored, queued response; a
    cancel while it runs aborts it (`status: "cancelled"`, kept so); otherwise GET shows it completed."""
    slow, fast = await start(enable_responses_store=True), await start(enable_responses_store=True)
    set_slow_token_s(slow, 600.0)  # one step in ten minutes: still running whenever it is cancelled
    sdk = client(slow.urls[0])
    queued = await sdk.responses.create(model=MODEL, input="hi", background=True, max_output_tokens=4)
    assert (queued.status, queued.output, queued.usage, queued.background) == ("queued", [], None, True)
    assert (await sdk.responses.retrieve(queued.id)).status == "queued"
    cancelled = await sdk.responses.cancel(queued.id)
    assert (cancelled.id, cancelled.status) == (queued.id, "cancelled")
    scheduler = slow.engines[0].scheduler
    assert (list(scheduler.running), list(scheduler.waiting)) == ([], [])  # its generation was aborted
    assert (await sdk.responses.retrieve(queued.id)).status == "cancelled"
    sdk = client(fast.urls[0])
    done = await sdk.responses.create(model=MODEL, input="hi", background=True, max_output_tokens=4)

    async def completed() -> bool:
        return (await sdk.responses.retrieve(done.id)).status == "incomplete"  # capped at 4 tokens

    await until(completed, what="the background response finished")
    final = await sdk.responses.retrieve(done.id)
    assert final.usage is not None
    assert final.usage.output_tokens == 4
    assert final.background is True
    with pytest.raises(openai.BadRequestError):  # finished: nothing to cancel
        await sdk.responses.cancel(done.id)


async def test_background_refusals(start: StartCluster) -> None:
    on, off = await start(enable_responses_store=True), await start()
    async with httpx.AsyncClient(timeout=30) as http:
        no_store = await http.post(
            on.urls[0] + "/v1/responses",
            json={"model": MODEL, "input": "hi", "background": True, "store": False},
        )
        store_off = await http.post(
            off.urls[0] + "/v1/responses", json={"model": MODEL, "input": "hi", "background": True}
        )
    assert no_store.status_code == 400
    assert no_store.json()["error"]["message"] == "background can only be used when `store` is true"
    assert store_off.status_code == 400
    assert store_off.json()["error"]["param"] == "background"
    assert "VLLM_ENABLE_RESPONSES_API_STORE=1" in store_off.json()["error"]["message"]
