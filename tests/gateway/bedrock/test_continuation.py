"""Continuing a stream on the Bedrock tier: an assistant prefill for the models that accept one, a user turn
asking for the rest for those that refuse a conversation ending with an assistant message (Bedrock's
ValidationException, emulated by the stub's `no_prefill_models`). The translation on its own, then real
botocore against the stub, then the whole gateway (openai SDK -> cascade [eks, bedrock]) with a fake vLLM
engine that breaks mid-stream. AWS and GPUs cannot be reached here: the stub and the fake stand in."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from eksinfer.errors import ConfigError
from eksinfer.gateway.bedrock.client import BedrockClient
from eksinfer.gateway.bedrock.config import parse_bedrock_pool
from eksinfer.gateway.bedrock.errors import BedrockError
from eksinfer.gateway.bedrock.translate import CONTINUE_INSTRUCTION, to_converse
from eksinfer.gateway.config import parse_config
from eksinfer.gateway.http import RequestRefused
from eksinfer.gateway.runtime import build_runtime
from eksinfer.sim.bedrock import start_stub
from eksinfer.sim.bedrock.stub import NO_PREFILL_MESSAGE, RunningStub
from tests.gateway.bedrock.conftest import MODEL_ID, pool
from tests.gateway.test_proxy_fakes import EngineBehaviour, FakeEngine
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)
ASKED = [{"role": "user", "content": "tell me a story"}]
CONTINUATION = {
    "model": "llama",
    "messages": [*ASKED, {"role": "assistant", "content": "Once upon a time "}],
    "continue_final_message": True,
    "max_tokens": 5,
}


# --- the translation -------------------------------------------------------------------------------------
def test_a_continuation_is_a_prefill_for_models_that_accept_one() -> None:
    request = to_converse(CONTINUATION, MODEL_ID, prefill=True)
    assert request["messages"][-1] == {"role": "assistant", "content": [{"text": "Once upon a time"}]}


def test_a_continuation_asks_for_the_rest_where_prefill_is_refused() -> None:
    request = to_converse(CONTINUATION, MODEL_ID, prefill=False)
    assert [m["role"] for m in request["messages"]] == ["user", "assistant", "user"]
    assert request["messages"][1]["content"] == [{"text": "Once upon a time "}]
    assert request["messages"][-1]["content"] == [{"text": CONTINUE_INSTRUCTION}]


def test_continue_final_message_needs_a_final_assistant_text_and_is_never_an_unknown_field() -> None:
    with pytest.raises(RequestRefused) as refused:
        to_converse({"messages": ASKED, "continue_final_message": True}, MODEL_ID)
    assert refused.value.param == "continue_final_message"
    vllm_style = {**CONTINUATION, "add_generation_prompt": False}
    assert to_converse(vllm_style, MODEL_ID, drop_unsupported=False)["messages"][-1]["role"] == "user"
    own_prefill = {"messages": [*ASKED, {"role": "assistant", "content": "{"}]}
    assert to_converse(own_prefill, MODEL_ID)["messages"][-1]["role"] == "assistant"  # sent as it is


def test_assistant_prefill_names_models_of_the_pool() -> None:
    settings = {"region": "us-east-1", "models": {"claude": "anthropic.claude-3-5-haiku-20241022-v1:0"}}
    assert parse_bedrock_pool({**settings, "assistant_prefill": ["claude"]}).assistant_prefill == ["claude"]
    with pytest.raises(ConfigError) as err:
        parse_bedrock_pool({**settings, "assistant_prefill": ["llama"]})
    assert err.value.field == "pools.bedrock.assistant_prefill"


# --- real botocore against the stub ------------------------------------------------------------------------
@pytest.fixture
async def refusing() -> AsyncIterator[RunningStub]:
    running = await start_stub(no_prefill_models=frozenset({MODEL_ID}))
    yield running
    await running.stop()


async def collect(stream: AsyncIterator[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in stream if c["choices"])


async def test_the_stub_refuses_a_final_assistant_message_like_bedrock(
    aws_env: None, refusing: RunningStub
) -> None:
    bedrock = BedrockClient(pool(refusing.url))
    try:
        own_prefill = {"model": "llama", "messages": [*ASKED, {"role": "assistant", "content": "{"}]}
        with pytest.raises(BedrockError) as refused:
            await bedrock.complete(own_prefill, "llama")
        assert refused.value.status == 400
        assert refused.value.code == "bedrock_validation"
        assert NO_PREFILL_MESSAGE in str(refused.value)
    finally:
        await bedrock.close()


async def test_a_model_without_prefill_gets_the_instruction_and_answers(
    aws_env: None, refusing: RunningStub
) -> None:
    bedrock = BedrockClient(pool(refusing.url))
    try:
        answer = await bedrock.complete(CONTINUATION, "llama")
        assert answer["choices"][0]["message"]["content"]
        text = [c async for c in bedrock.stream({**CONTINUATION, "stream": True}, "llama")]
        assert text
        sent = [r.body["messages"] for r in refusing.stub.recorded]
        assert len(sent) == 2  # one call each: no refusal on the way
        assert all(m[-1] == {"role": "user", "content": [{"text": CONTINUE_INSTRUCTION}]} for m in sent)
    finally:
        await bedrock.close()


async def test_a_listed_model_that_refuses_after_all_is_continued_with_the_instruction(
    aws_env: None, refusing: RunningStub, caplog: pytest.LogCaptureFixture
) -> None:
    bedrock = BedrockClient(pool(refusing.url, assistant_prefill=["llama"]))
    try:
        with caplog.at_level(logging.WARNING, logger="eksinfer.gateway.bedrock.client"):
            chunks = [c async for c in bedrock.stream({**CONTINUATION, "stream": True}, "llama")]
        assert any(c["choices"] and c["choices"][0]["delta"].get("content") for c in chunks)
        first, second = (r.body["messages"][-1] for r in refusing.stub.recorded)
        assert first == {"role": "assistant", "content": [{"text": "Once upon a time"}]}  # refused
        assert second["role"] == "user"
        assert "assistant_prefill" in caplog.text
        await bedrock.complete(CONTINUATION, "llama")  # remembered: straight to the instruction
        assert len(refusing.stub.recorded) == 3
        assert refusing.stub.recorded[-1].body["messages"][-1]["role"] == "user"
    finally:
        await bedrock.close()


async def test_a_model_with_prefill_continues_its_own_last_turn(aws_env: None, stub: RunningStub) -> None:
    bedrock = BedrockClient(pool(stub.url, assistant_prefill=["llama"]))
    try:
        await bedrock.complete(CONTINUATION, "llama")
        sent = stub.stub.recorded[-1].body["messages"]
        assert sent[-1] == {"role": "assistant", "content": [{"text": "Once upon a time"}]}
        spaced = {**CONTINUATION, "continue_final_message": False}  # the client's own, with a space
        with pytest.raises(BedrockError, match="trailing whitespace"):
            await bedrock.complete(spaced, "llama")
    finally:
        await bedrock.close()


# --- the gateway: a stream that breaks on the engine continues on Bedrock ---------------------------------
@pytest.mark.parametrize("prefill", [False, True])
async def test_a_broken_stream_continues_on_bedrock_with_or_without_prefill(
    aws_env: None, refusing: RunningStub, prefill: bool
) -> None:
    engine = await FakeEngine(model="llama").start()
    engine.behaviour = EngineBehaviour(tokens=6, break_after=2, role_event=True)
    if prefill:
        refusing.stub.no_prefill_models = frozenset()
    bedrock_pool = {
        "kind": "bedrock",
        "region": "us-east-1",
        "endpoint_url": refusing.url,
        "models": {"llama": MODEL_ID},
        "assistant_prefill": ["llama"] if prefill else [],
    }
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "endpoints": {"static": [{"url": engine.url, "pool": "eks"}]},
            "pools": {"eks": {"kind": "vllm"}, "bedrock": bedrock_pool},
            "models": {"llama": {"cascade": ["eks", "bedrock"], "continue_streams": True}},
            "resilience": {"health_checks": {"enabled": False}, "stall_after_s": 0, "slow_start_s": 0},
        }
    )
    runtime = build_runtime(config)
    await runtime.start()
    # the cascade's next tier would take a request sent before the engines' models are known
    await until(lambda: all(s.models for s in runtime.registry.all()), what="engines' models scraped")
    sdk = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{runtime.port}/v1", api_key="k", max_retries=0)
    try:
        stream = await sdk.chat.completions.create(
            model="llama",
            messages=ASKED,  # type: ignore[arg-type]
            stream=True,
            max_tokens=10,
        )
        chunks = [c async for c in stream]  # the SDK raises on an error event: none came
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == " w0 w1" + "b0 b1 b2 b3 b4 b5 b6 b7"  # the engine's, then the stub's words
        assert [c.choices[0].delta.role for c in chunks if c.choices].count("assistant") == 1
        sent = refusing.stub.recorded[-1].body
        assert len(refusing.stub.recorded) == 1  # no refused call on the way
        assert sent["inferenceConfig"]["maxTokens"] == 8
        if prefill:
            assert sent["messages"][-1] == {"role": "assistant", "content": [{"text": " w0 w1"}]}
        else:
            assert sent["messages"][-2] == {"role": "assistant", "content": [{"text": " w0 w1"}]}
            assert sent["messages"][-1] == {"role": "user", "content": [{"text": CONTINUE_INSTRUCTION}]}
    finally:
        await sdk.close()
        await runtime.stop()
        await engine.stop()
