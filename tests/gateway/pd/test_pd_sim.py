"""P/D end to end against the simulator's NixlConnector: the openai SDK -> gateway -> `eksinfer sim` engines
(one prefill, one decode, KV over a simulated NVLink), checked on the engines' own vLLM metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eksinfer.gateway.config import parse_config
from eksinfer.gateway.runtime import GatewayRuntime, build_runtime
from eksinfer.sim.cluster import SimCluster, start_cluster
from eksinfer.sim.config import SimOptions
from tests.waiting import DEADLINE_S, until

HAS_NIXL = "kv_transfer" in getattr(SimOptions, "__dataclass_fields__", {})
pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not HAS_NIXL, reason="this simulator has no NixlConnector (SimOptions.kv_transfer)"),
]
NIXL = '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'
DOCUMENT = " ".join(f"clause {i} of the contract says the tenant pays on time." for i in range(60))


async def _sums(url: str, name: str) -> dict[str, float]:
    """`name` summed per `source` label (or "" when it has none) from one engine's /metrics."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(url + "/metrics")).text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                key = s.labels.get("source", "")
                out[key] = out.get(key, 0.0) + s.value
    return out


@dataclass
class Stack:
    cluster: SimCluster
    runtime: GatewayRuntime
    client: openai.AsyncOpenAI

    @property
    def prefill_url(self) -> str:
        return self.cluster.urls[0]

    @property
    def decode_url(self) -> str:
        return self.cluster.urls[1]


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    from eksinfer.sim.pd.config import KvTransferConfig

    options = SimOptions(
        port=0,
        time_scale=0.0,
        num_gpu_blocks=512,
        max_model_len=4096,
        natural_output_tokens=0,
        enable_prompt_tokens_details=True,
        served_model_name=("tiny",),
        kv_transfer=KvTransferConfig.from_json(NIXL),
        kv_link="nvlink",
        nixl_side_channel_port=0,
    )
    cluster = await start_cluster(options, 2)
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "route_headers": True},
            "endpoints": {
                "static": [
                    {"url": cluster.urls[0], "pool": "prefill", "models": ["tiny"]},
                    {"url": cluster.urls[1], "pool": "decode", "models": ["tiny"]},
                ]
            },
            "routing": {"preset": "kv-aware", "tokenizer": {"mode": "builtin"}},
            "disaggregation": {"tiny": {"prefill_pool": "prefill", "decode_pool": "decode"}},
        }
    )
    runtime = build_runtime(config)
    await runtime.start()
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{runtime.port}/v1", api_key="x", max_retries=0)
    yield Stack(cluster, runtime, client)
    await client.close()
    await runtime.stop()
    await cluster.stop()


async def _chat(stack: Stack, messages: list[dict[str, str]]) -> tuple[str, int, int]:
    """(route explanation, completion tokens, cached tokens) of one streamed chat through the openai SDK."""
    raw = await stack.client.chat.completions.with_raw_response.create(
        model="tiny",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    tokens, usage = 0, None
    async with asyncio.timeout(DEADLINE_S):
        async for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                tokens += 1
            if chunk.usage is not None:
                usage = chunk.usage
    assert usage is not None
    assert usage.completion_tokens == 8
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    return raw.headers["x-eksinfer-route"], tokens, cached or 0


async def test_long_prompts_prefill_remotely_and_stream_through_openai_sdk(stack: Stack) -> None:
    first = [{"role": "system", "content": DOCUMENT}, {"role": "user", "content": "Who pays?"}]
    route, tokens, cached = await _chat(stack, first)
    assert "pd=remote" in route
    assert tokens == 8
    assert cached == 0  # the prefiller had nothing cached
    prefill = await _sums(stack.prefill_url, "vllm:prompt_tokens_by_source_total")
    decode = await _sums(stack.decode_url, "vllm:prompt_tokens_by_source_total")
    assert prefill["local_compute"] > 0  # the prompt was computed on the prefill engine ...
    assert decode["external_kv_transfer"] > 0  # ... and pulled by the decode engine
    assert decode["local_compute"] < prefill["local_compute"]

    # The decode engine now holds the document's blocks: the same prompt again is prefilled where it decodes.
    route, _, cached = await _chat(stack, first)
    assert "pd=local" in route
    assert cached > 0

    # A long new question after the same document: remote again, and the prefiller had the document cached.
    question = " ".join(f"and what happens in case {i} when the tenant is late?" for i in range(40))
    route, _, cached = await _chat(stack, [first[0], {"role": "user", "content": question}])
    assert "pd=remote" in route
    assert cached > 0
    await until(
        lambda: all(s.inflight_requests == 0 for s in stack.runtime.registry.all()), what="in flight released"
    )


async def test_short_chat_prefills_on_the_decode_engine(stack: Stack) -> None:
    raw = await stack.client.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert raw.parse().usage.completion_tokens == 4  # type: ignore[union-attr]
    assert "pd=local" in raw.headers["x-eksinfer-route"]
    prefill = await _sums(stack.prefill_url, "vllm:request_success_total")
    assert sum(prefill.values()) == 0  # the prefill engine never saw it
