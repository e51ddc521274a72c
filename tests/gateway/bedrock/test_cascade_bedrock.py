"""Bedrock as the gateway's last tier, end to end: openai SDK -> gateway (cascade [eks, bedrock]) -> the real
BedrockClient and botocore -> the Bedrock stub, with the self-hosted pool down (a closed port). AWS and GPUs
are not reachable here: the stub stands in for Bedrock Runtime, a closed port for a dead engine."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from eksinfer.gateway.config import GatewayConfig, parse_config
from eksinfer.sim.bedrock import StubFaults
from eksinfer.sim.bedrock.stub import RunningStub
from tests.gateway.bedrock.conftest import ACCESS_KEY, MODEL_ID, SECRET_KEY, SESSION_TOKEN

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        "pools" not in GatewayConfig.model_fields,
        reason="the gateway's cascade (pools/models, issue 13a) is not on this branch yet",
    ),
]
CHAT = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def gateway(aws_env: None, stub: RunningStub) -> AsyncIterator[Any]:
    from eksinfer.gateway.runtime import build_runtime

    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "endpoints": {"static": [{"url": "http://127.0.0.1:9", "models": ["llama"], "pool": "eks"}]},
            "pools": {
                "eks": {"kind": "vllm"},
                "bedrock": {
                    "kind": "bedrock",
                    "region": "us-east-1",
                    "endpoint_url": stub.url,
                    "models": {"llama": MODEL_ID},
                    "max_concurrency": 4,
                },
            },
            "models": {"llama": {"cascade": ["eks", "bedrock"]}},
            "resilience": {"retries": {"backoff_base_s": 0, "backoff_max_s": 0}},
        }
    )
    runtime = build_runtime(config)
    await runtime.start()
    yield runtime
    await runtime.stop()


def base(runtime: Any) -> str:
    return f"http://127.0.0.1:{runtime.port}"


async def test_bedrock_answers_when_the_engines_are_down(gateway: Any, stub: RunningStub) -> None:
    from eksinfer.gateway.proxy import POOL_HEADER

    stub.stub.faults = StubFaults(throttle_share=0.0)
    sdk = openai.AsyncOpenAI(base_url=base(gateway) + "/v1", api_key="k", max_retries=0)
    try:
        raw = await sdk.chat.completions.with_raw_response.create(model="llama", messages=CHAT, max_tokens=3)  # type: ignore[arg-type]
        assert raw.headers[POOL_HEADER] == "bedrock"
        assert raw.parse().choices[0].message.content == "b0 b1 b2"
        stream = await sdk.chat.completions.create(
            model="llama",
            messages=CHAT,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == " ".join(
            f"b{i}" for i in range(8)
        )
        assert chunks[-1].usage is not None
    finally:
        await sdk.close()
    assert [r.model_id for r in stub.stub.recorded] == [MODEL_ID, MODEL_ID]
    assert [r.stream for r in stub.stub.recorded] == [False, True]


async def test_throttled_bedrock_is_retried_by_the_gateway(
    gateway: Any, stub: RunningStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stub.stub.faults = StubFaults(throttle_share=1.0)
    chat = base(gateway) + "/v1/chat/completions"
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(chat, json={"model": "llama", "messages": CHAT})
        metrics = (await client.get(base(gateway) + "/metrics")).text
    assert r.status_code == 429  # Bedrock kept throttling: the client gets Bedrock's status, not a hang
    assert r.json()["error"]["code"] == "bedrock_throttling"
    assert len(stub.stub.recorded) >= 2  # the gateway retried (botocore itself never does)
    # the gateway's answer, its metrics and its logs (every logger at DEBUG) carry no credential
    assert caplog.records
    for text in (r.text, metrics, caplog.text):
        for secret in (ACCESS_KEY, SECRET_KEY, SESSION_TOKEN[:40]):
            assert secret not in text


async def test_bedrock_stream_breaking_after_content_ends_with_an_error_event(
    gateway: Any, stub: RunningStub
) -> None:
    stub.stub.faults = StubFaults(break_share=1.0, break_after_events=3)
    body = {"model": "llama", "messages": CHAT, "stream": True}
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(base(gateway) + "/v1/chat/completions", json=body)
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert r.status_code == 200
    assert '"b0"' in events[0]
    assert "error" in events[-1]
    assert "[DONE]" not in events
