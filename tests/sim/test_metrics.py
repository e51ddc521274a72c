"""/metrics: vLLM 0.32's names, types, labels and buckets, and counters that move as requests do."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from eksinfer.sim.config import FaultOptions
from tests.sim.conftest import StartCluster, set_slow_token_s
from tests.waiting import DEADLINE_S, until

GOLDEN = Path(__file__).parent / "data" / "metrics_after_requests.txt"  # real vLLM 0.32 scrape

REQUIRED = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:num_preemptions",
    "vllm:request_success",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:cache_config_info",
)


def _families(text: str) -> dict[str, tuple[str, set[str], list[str]]]:
    """name -> (type, label names except le, bucket bounds)."""
    out: dict[str, tuple[str, set[str], list[str]]] = {}
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith("vllm:"):
            continue
        labels: set[str] = set()
        buckets: list[str] = []
        for s in fam.samples:
            labels |= set(s.labels) - {"le"}
            if s.name.endswith("_bucket") and s.labels.get("engine") == "0":
                buckets.append(s.labels["le"])
        out[fam.name] = (fam.type, labels, buckets)
    return out


def _value(text: str, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise KeyError(name)


async def test_names_types_labels_buckets_match_vllm(start: StartCluster) -> None:
    cluster = await start()
    async with httpx.AsyncClient(timeout=10) as client:
        await client.post(cluster.urls[0] + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
        text = (await client.get(cluster.urls[0] + "/metrics")).text
    ours, theirs = _families(text), _families(GOLDEN.read_text())
    for name in REQUIRED:
        assert name in ours, name
    for name, (kind, labels, buckets) in ours.items():
        assert name in theirs, f"{name} is not a vLLM metric"
        want_kind, want_labels, want_buckets = theirs[name]
        assert kind == want_kind, name
        if name == "vllm:cache_config_info":
            assert {"engine", "block_size", "num_gpu_blocks"} <= labels <= want_labels
            continue
        assert labels == want_labels, name
        assert buckets == want_buckets, name


async def test_counters_move_with_requests(start: StartCluster) -> None:
    cluster = await start(enable_prompt_tokens_details=True, num_gpu_blocks=101, max_model_len=1024)
    url = cluster.urls[0]
    prompt = list(range(100, 140))  # 40 token ids: 2 full blocks of 16
    async with httpx.AsyncClient(timeout=10) as client:
        before = (await client.get(url + "/metrics")).text
        cached = []
        for _ in range(2):
            r = await client.post(
                url + "/v1/completions", json={"prompt": prompt, "max_tokens": 3, "ignore_eos": True}
            )
            cached.append(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])
        after = (await client.get(url + "/metrics")).text
    assert _value(before, "vllm:prefix_cache_queries_total") == 0
    assert cached == [0, 32]
    assert _value(after, "vllm:prefix_cache_queries_total") == 80
    assert _value(after, "vllm:prefix_cache_hits_total") == 32
    assert _value(after, "vllm:prompt_tokens_total") == 80
    assert _value(after, "vllm:prompt_tokens_cached_total") == 32
    assert _value(after, "vllm:prompt_tokens_by_source_total", source="local_compute") == 48
    assert _value(after, "vllm:generation_tokens_total") == 6
    assert _value(after, "vllm:iteration_tokens_total_sum") == 40 + 8 + 6  # computed prompt + generated
    assert _value(after, "vllm:request_success_total", finished_reason="length") == 2
    assert _value(after, "vllm:time_to_first_token_seconds_count") == 2
    assert _value(after, "vllm:inter_token_latency_seconds_count") == 4
    assert _value(after, "vllm:e2e_request_latency_seconds_count") == 2
    assert _value(after, "vllm:num_requests_running") == 0
    assert _value(after, "vllm:kv_cache_usage_perc") == 0.0
    assert _value(after, "vllm:cache_config_info", num_gpu_blocks="101", block_size="16") == 1.0


async def test_gauges_follow_requests_in_flight(start: StartCluster) -> None:
    # 1 s steps hold requests in the engine for half a minute; max-num-seqs 2 keeps the third waiting. Once
    # the metrics have shown that, the steps go back to full speed and every request finishes.
    cluster = await start(max_num_seqs=2, faults=FaultOptions(slow_token_s=1.0))
    url = cluster.urls[0]
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        body = {"prompt": "hold", "max_tokens": 30, "ignore_eos": True}
        tasks = [asyncio.create_task(client.post(url + "/v1/completions", json=body)) for _ in range(3)]
        seen: list[float] = []

        async def two_running_one_waiting() -> bool:
            text = (await client.get(url + "/metrics")).text
            running, waiting = (
                _value(text, "vllm:num_requests_running"),
                _value(text, "vllm:num_requests_waiting"),
            )
            if (running, waiting) == (2, 1):
                seen.append(_value(text, "vllm:kv_cache_usage_perc"))
            return bool(seen)

        await until(two_running_one_waiting, what="2 running and 1 waiting")
        assert seen[0] > 0
        set_slow_token_s(cluster, 0.0)
        await asyncio.gather(*tasks)
        text = (await client.get(url + "/metrics")).text
    assert (_value(text, "vllm:num_requests_running"), _value(text, "vllm:num_requests_waiting")) == (0, 0)
    assert _value(text, "vllm:request_queue_time_seconds_count") == 3


async def test_client_disconnect_aborts(start: StartCluster) -> None:
    cluster = await start(faults=FaultOptions(slow_token_s=0.02))
    url = cluster.urls[0]
    async with httpx.AsyncClient(timeout=10) as client:
        body = {"prompt": "bye", "max_tokens": 500, "ignore_eos": True, "stream": True}
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            async for _ in r.aiter_lines():
                break
        texts: list[str] = []

        async def aborted() -> bool:
            texts.append((await client.get(url + "/metrics")).text)
            return _value(texts[-1], "vllm:request_success_total", finished_reason="abort") == 1

        await until(aborted, what="the abort reached the metrics")
        assert _value(texts[-1], "vllm:num_requests_running") == 0


async def test_step_time_comes_from_the_performance_model(start: StartCluster) -> None:
    cluster = await start(max_num_batched_tokens=64)
    engine = cluster.engines[0]
    async with httpx.AsyncClient(timeout=10) as client:
        await client.post(
            cluster.urls[0] + "/v1/completions",
            json={"prompt": list(range(3, 103)), "max_tokens": 3, "ignore_eos": True},
        )
    step = engine.perf.step_time_s
    # 100 prompt tokens in chunks of 64 and 36, then two decodes over 101 and 102 tokens of context
    expect = (
        step(prefill_tokens=64, prefill_attention_pairs=64 * 64, decode_seqs=0, decode_context_tokens=0)
        + step(prefill_tokens=36, prefill_attention_pairs=36 * 100, decode_seqs=0, decode_context_tokens=0)
        + step(prefill_tokens=0, prefill_attention_pairs=0, decode_seqs=1, decode_context_tokens=101)
        + step(prefill_tokens=0, prefill_attention_pairs=0, decode_seqs=1, decode_context_tokens=102)
    )
    assert engine.num_steps == 4
    assert abs(engine.simulated_s - expect) < 1e-12


async def test_lora_requests_info(start: StartCluster) -> None:
    cluster = await start(lora_modules=("sql", "chat"), max_loras=2, faults=FaultOptions(slow_token_s=1.0))
    url = cluster.urls[0]
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        task = asyncio.create_task(
            client.post(
                url + "/v1/completions",
                json={"model": "sql", "prompt": "x", "max_tokens": 20, "ignore_eos": True},
            )
        )
        labels: dict[str, str] = {}

        async def adapter_running() -> bool:
            text = (await client.get(url + "/metrics")).text
            for fam in text_string_to_metric_families(text):
                if fam.name == "vllm:lora_requests_info":
                    labels.update(fam.samples[0].labels)
            return labels.get("running_lora_adapters") == "sql"

        await until(adapter_running, what="the adapter running")
        set_slow_token_s(cluster, 0.0)
        await task
    assert labels == {"max_lora": "2", "running_lora_adapters": "sql", "waiting_lora_adapters": ""}
