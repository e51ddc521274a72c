"""Every forwarded vLLM route through the gateway (real router) to simulated engines, with the `openai` SDK.

Generative routes follow the configured preset; pooling and tokenizer routes use the load preset (the
route-explanation header says which). The simulated engines stand in for vLLM; the live tier runs the same
calls against a real vLLM where the CPU build serves them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from eksinfer.gateway.config import parse_config
from eksinfer.gateway.runtime import GatewayRuntime, build_runtime
from eksinfer.sim.cluster import SimCluster
from tests.sim.conftest import StartCluster, client, start  # noqa: F401 - the fixtures
from tests.waiting import until

MODEL = "llama-3.1-8b"


async def gateway_for(*clusters: SimCluster) -> GatewayRuntime:
    urls = [u for c in clusters for u in c.urls]
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "route_headers": True},
            "endpoints": {"static": [{"url": u, "models": [MODEL]} for u in urls]},
            "routing": {"preset": "approx-prefix"},
        }
    )
    runtime = build_runtime(config)
    await runtime.start()
    return runtime


@pytest.fixture
async def stack(start: StartCluster) -> AsyncIterator[tuple[GatewayRuntime, openai.AsyncOpenAI]]:  # noqa: F811
    cluster = await start(2, enable_auto_tool_choice=True, tool_call_parser="hermes")
    runtime = await gateway_for(cluster)
    port = runtime.port
    sdk = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    try:
        yield runtime, sdk
    finally:
        await sdk.close()
        await runtime.stop()


def route_of(headers: Any) -> str:
    return str(headers["x-eksinfer-route"])


async def test_tools_and_structured_output_through_the_gateway(
    stack: tuple[GatewayRuntime, openai.AsyncOpenAI],
) -> None:
    _, sdk = stack
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools: Any = [{"type": "function", "function": {"name": "weather", "parameters": schema}}]
    out = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "weather?"}], tools=tools, tool_choice="required"
    )
    assert out.choices[0].finish_reason == "tool_calls"
    assert out.choices[0].message.tool_calls
    jsonschema.validate(json.loads(out.choices[0].message.tool_calls[0].function.arguments), schema)
    stream = await sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "weather?"}],
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "weather"}},
        stream=True,
    )
    arguments = ""
    async for chunk in stream:
        for c in chunk.choices:
            for delta in c.delta.tool_calls or ():
                arguments += (delta.function and delta.function.arguments) or ""
    jsonschema.validate(json.loads(arguments), schema)
    lp = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3, logprobs=True, top_logprobs=2
    )
    assert lp.choices[0].logprobs is not None
    assert lp.choices[0].logprobs.content is not None
    assert len(lp.choices[0].logprobs.content) == 3


async def test_responses_route_with_the_profile_and_stream(
    stack: tuple[GatewayRuntime, openai.AsyncOpenAI],
) -> None:
    _, sdk = stack
    raw = await sdk.responses.with_raw_response.create(
        model=MODEL, input="Tell me about the sea", max_output_tokens=4
    )
    assert "preset=approx-prefix" in route_of(raw.headers)
    assert raw.parse().usage is not None
    stream = await sdk.responses.create(
        model=MODEL, input="Tell me about the sea", max_output_tokens=4, stream=True
    )
    kinds = [event.type async for event in stream]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"  # vLLM 0.32 sends it for an incomplete answer too
    assert kinds.count("response.output_text.delta") == 4


async def test_pooling_and_tokenizer_routes_use_the_load_preset(start: StartCluster) -> None:  # noqa: F811
    pooled = await start(runner="pooling")
    runtime = await gateway_for(pooled)
    url = f"http://127.0.0.1:{runtime.port}"
    sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    try:
        raw = await sdk.embeddings.with_raw_response.create(model=MODEL, input=["a", "b"])
        assert "preset=load" in route_of(raw.headers)
        assert len(raw.parse().data) == 2
        async with httpx.AsyncClient() as http:
            tok = await http.post(url + "/tokenize", json={"model": MODEL, "prompt": "hello there"})
            detok = await http.post(
                url + "/detokenize", json={"model": MODEL, "tokens": tok.json()["tokens"]}
            )
            rerank = await http.post(
                url + "/v2/rerank", json={"model": MODEL, "query": "q", "documents": ["d", "q"]}
            )
            no_query = await http.post(url + "/v1/rerank", json={"model": MODEL, "documents": ["d"]})
            no_input = await http.post(url + "/v1/embeddings", json={"model": MODEL})
            scores = [
                await http.post(url + path, json={"model": MODEL, "text_1": "a", "text_2": ["b", "a"]})
                for path in ("/score", "/v1/score")
            ]
            metrics = (await http.get(url + "/metrics")).text
        assert "preset=load" in tok.headers["x-eksinfer-route"]
        assert detok.json()["prompt"].endswith("hello there")
        assert rerank.status_code == 200
        assert [r["index"] for r in rerank.json()["results"]] == [1, 0]  # the query itself scores 1.0
        assert "preset=load" in rerank.headers["x-eksinfer-route"]
        for score in scores:
            assert score.status_code == 200
            assert "preset=load" in score.headers["x-eksinfer-route"]
            assert score.json()["data"][1]["score"] == pytest.approx(1.0)
        for refused, field in ((no_query, "query"), (no_input, "input")):
            assert refused.status_code == 400
            assert refused.json()["error"]["param"] == field
        for route in ("/v1/embeddings", "/tokenize", "/v2/rerank", "/score"):
            assert f'route="{route}"' in metrics  # requests are counted per API route
    finally:
        await sdk.close()
        await runtime.stop()


async def test_lora_adapter_routes_reach_every_engine(start: StartCluster, client: Any) -> None:  # noqa: F811
    """With `server.lora_adapter_routes`, a load goes to every engine, the adapter is routable at once and
    listed by the gateway; a refusal (already loaded) comes back as the engine's own body and status."""
    cluster = await start(2, allow_runtime_lora_updating=True, enable_lora=True)
    urls = cluster.urls
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "lora_adapter_routes": True},
            "endpoints": {"static": [{"url": u} for u in urls]},
            "routing": {"preset": "load"},
        }
    )
    runtime = build_runtime(config)
    await runtime.start()
    url = f"http://127.0.0.1:{runtime.port}"
    try:
        await until(runtime.registry.ready, what="the engines' models read")
        sdk = client(url)
        load = {"lora_name": "sql", "lora_path": "org/sql-adapter"}
        async with httpx.AsyncClient(timeout=30) as http:
            first = await http.post(url + "/v1/load_lora_adapter", json=load)
            again = await http.post(url + "/v1/load_lora_adapter", json=load)
            engines = [(await http.get(u + "/v1/models")).json()["data"] for u in urls]
            out = await sdk.completions.create(model="sql", prompt="hi", max_tokens=2)
            listed = [m.id for m in (await sdk.models.list()).data]
            unload = await http.post(url + "/v1/unload_lora_adapter", json={"lora_name": "sql"})
        assert (first.status_code, first.text) == (200, "Success: LoRA adapter 'sql' added successfully.")
        assert again.status_code == 400
        assert again.json()["error"]["type"] == "InvalidUserInput"  # the engine's body, unchanged
        assert all([c["id"] for c in cards] == [MODEL, "sql"] for cards in engines)
        assert out.model == "sql"
        assert "sql" in listed
        assert unload.status_code == 200
        with pytest.raises(openai.NotFoundError):
            await sdk.completions.create(model="sql", prompt="hi", max_tokens=2)
    finally:
        await runtime.stop()


async def test_lora_adapter_routes_are_off_by_default(start: StartCluster) -> None:  # noqa: F811
    cluster = await start(allow_runtime_lora_updating=True, enable_lora=True)
    runtime = await gateway_for(cluster)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            got = await http.post(
                f"http://127.0.0.1:{runtime.port}/v1/load_lora_adapter",
                json={"lora_name": "a", "lora_path": "b"},
            )
        assert got.status_code == 404
    finally:
        await runtime.stop()
