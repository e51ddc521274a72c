"""Per-pool and per-tier series through a real cascade: openai SDK -> gateway (cascade [eks, bedrock], the
`eks` pool's context window 4,096 tokens) -> a fake vLLM engine or, for a request too long for that window,
the real BedrockClient and botocore -> the Bedrock stub. AWS and GPUs are not reachable here: the stub
stands in for Bedrock Runtime, the fake engine (tests/gateway/test_proxy_fakes.py) for vLLM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eksinfer.gateway.config import parse_config
from eksinfer.gateway.proxy import POOL_HEADER
from eksinfer.gateway.runtime import GatewayRuntime, build_runtime
from eksinfer.sim.bedrock.stub import RunningStub
from tests.gateway.bedrock.conftest import MODEL_ID
from tests.gateway.test_proxy_fakes import FakeEngine
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)

CHAT = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def gateway(aws_env: None, stub: RunningStub) -> AsyncIterator[GatewayRuntime]:
    engine = await FakeEngine(model="llama").start()
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "endpoints": {"static": [{"url": engine.url, "models": ["llama"], "pool": "eks"}]},
            "pools": {
                "eks": {"kind": "vllm", "max_context_tokens": 4096},
                "bedrock": {
                    "kind": "bedrock",
                    "region": "us-east-1",
                    "endpoint_url": stub.url,
                    "models": {"llama": MODEL_ID},
                },
            },
            "models": {"llama": {"cascade": ["eks", "bedrock"]}},
        }
    )
    runtime = build_runtime(config)
    await runtime.start()
    # the cascade's next tier would take a request sent before the engines' models are known
    await until(lambda: all(s.models for s in runtime.registry.all()), what="engines' models scraped")
    yield runtime
    await runtime.stop()
    await engine.stop()


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name
    }


async def test_ttft_duration_and_fallbacks_carry_the_pool_and_tiers_their_kind(gateway: Any) -> None:
    base = f"http://127.0.0.1:{gateway.port}"
    sdk = openai.AsyncOpenAI(base_url=base + "/v1", api_key="k", max_retries=0)
    try:
        short = await sdk.chat.completions.with_raw_response.create(
            model="llama",
            messages=CHAT,  # type: ignore[arg-type]
            max_tokens=5,
        )
        assert short.headers[POOL_HEADER] == "eks"
        # prompt + max_tokens over the eks window: the cascade passes it to Bedrock (context_too_long)
        long = await sdk.chat.completions.with_raw_response.create(
            model="llama",
            messages=CHAT,  # type: ignore[arg-type]
            max_tokens=8000,
        )
        assert long.headers[POOL_HEADER] == "bedrock"
    finally:
        await sdk.close()
    async with httpx.AsyncClient() as http:
        text = (await http.get(base + "/metrics")).text
    chat = ("route", "/v1/chat/completions")
    ttft = samples(text, "eksinfer_gateway_time_to_first_token_seconds_count")
    assert ttft[(("model", "llama"), ("pool", "eks"), chat)] == 1
    assert ttft[(("model", "llama"), ("pool", "bedrock"), chat)] == 1
    e2e = samples(text, "eksinfer_gateway_request_duration_seconds_count")
    assert e2e[(("model", "llama"), ("pool", "eks"), chat)] == 1
    assert e2e[(("model", "llama"), ("pool", "bedrock"), chat)] == 1
    fallbacks = samples(text, "eksinfer_gateway_fallbacks_total")
    assert fallbacks == {(("model", "llama"), ("pool", "eks"), ("reason", "context_too_long")): 1}
    info = samples(text, "eksinfer_gateway_cascade_tier_info")
    assert info == {
        (("kind", "vllm"), ("model", "llama"), ("pool", "eks"), ("tier", "1")): 1,
        (("kind", "bedrock"), ("model", "llama"), ("pool", "bedrock"), ("tier", "2")): 1,
    }
