"""P/D disaggregation in the simulator: vLLM 0.32 NixlConnector request steps against simulated engines.

The steps are llm-d's (its NIXL v2 connector): a prefill request (`do_remote_decode`, max_tokens 1, not
streamed), then a decode request carrying the `kv_transfer_params` the prefill returned. The decode engine
really contacts the prefill engine's side channel; no GPU, so the transfer itself is a modelled wait.
"""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from eksinfer.catalog import get_gpu, get_instance
from eksinfer.catalog.hardware import TCP_FLOW_GBPS
from eksinfer.errors import ConfigError, UsageError
from eksinfer.sim.blocks import BlockPool, BlockTable
from eksinfer.sim.cluster import SimCluster
from eksinfer.sim.pd.config import KvTransferConfig
from eksinfer.sim.pd.connector import descriptors
from eksinfer.sim.pd.link import link_gbytes_per_s, transfer_s
from eksinfer.sim.pd.pinned import PinnedBlocks
from tests.sim.conftest import BASE, Sdk, StartCluster, free_port, set_slow_token_s
from tests.waiting import DEADLINE_S, FakeClock, until

CLI = [sys.executable, "-m", "eksinfer.cli.main", "sim"]

NIXL = KvTransferConfig.from_json('{"kv_connector":"NixlConnector","kv_role":"kv_both"}')
PD = {"kv_transfer": NIXL, "nixl_side_channel_port": 0, "enable_prompt_tokens_details": True}
PREFILL_PARAMS = {  # llm-d's first request, field for field
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}
VLLM_KEYS = [  # vLLM 0.32 NixlConnector request_finished + the scheduler's remote_prefill_cached_tokens
    "do_remote_prefill",
    "do_remote_decode",
    "remote_block_ids",
    "remote_engine_id",
    "remote_request_id",
    "remote_host",
    "remote_port",
    "tp_size",
    "dcp_size",
    "pp_size",
    "remote_num_tokens",
    "remote_blocks_expiry_time",
    "transfer_mode",
    "remote_prefill_cached_tokens",
]
PROMPT = "the quick brown fox jumps over the lazy dog " * 40


async def _post(url: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.post(url + path, json=body) as r:
        return r.status, await r.json()


async def _counter(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _pd(start: StartCluster, **changes: Any) -> SimCluster:
    """One process, engine 0 the prefill pool, engine 1 the decode pool."""
    return await start(2, prefill_replicas=1, **{**PD, **changes})


async def _prefill(url: str, prompt: str | list[int] = PROMPT) -> dict[str, Any]:
    status, body = await _post(
        url, "/v1/completions", {"prompt": prompt, "max_tokens": 1, "kv_transfer_params": PREFILL_PARAMS}
    )
    assert status == 200, body
    return body


async def test_prefill_returns_vllm_kv_transfer_params_and_pins_its_blocks(start: StartCluster) -> None:
    cluster = await _pd(start)
    prefill, decode = cluster.engines
    free_before = prefill.pool.num_free_blocks
    body = await _prefill(cluster.urls[0])
    params = body["kv_transfer_params"]
    assert list(params) == VLLM_KEYS
    prompt_tokens = body["usage"]["prompt_tokens"]
    blocks = params["remote_block_ids"]
    assert len(blocks) == 1
    assert len(blocks[0]) == math.ceil(prompt_tokens / BASE.block_size)
    assert params["do_remote_prefill"] is True
    assert params["do_remote_decode"] is False
    assert params["remote_engine_id"] == prefill.options.kv_transfer.engine_id  # type: ignore[union-attr]
    assert params["remote_engine_id"] != decode.options.kv_transfer.engine_id  # type: ignore[union-attr]
    assert params["remote_request_id"].startswith(body["id"] + "-0-")  # vLLM's engine request id
    assert (params["remote_host"], params["remote_port"]) == ("localhost", prefill.nixl.port)  # type: ignore[union-attr]
    assert params["tp_size"] == 1
    assert params["remote_num_tokens"] == prompt_tokens
    assert params["transfer_mode"] == "pull"
    assert params["remote_prefill_cached_tokens"] == 0
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 1
    # the blocks stay allocated for the decode side: not back in the free queue
    assert prefill.pool.num_free_blocks == free_before - len(blocks[0])
    assert await _counter(cluster.urls[0], "eksinfer_nixl_pinned_blocks") == len(blocks[0])
    assert await _counter(cluster.urls[0], "eksinfer_nixl_pinned_requests") == 1


async def test_decode_pulls_the_blocks_and_the_prefill_frees_them(start: StartCluster) -> None:
    cluster = await _pd(start)
    prefill, decode = cluster.engines
    free_before = prefill.pool.num_free_blocks
    first = await _prefill(cluster.urls[0])
    n = first["usage"]["prompt_tokens"]
    status, body = await _post(
        cluster.urls[1],
        "/v1/completions",
        {"prompt": PROMPT, "max_tokens": 5, "kv_transfer_params": first["kv_transfer_params"]},
    )
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] == n
    assert body["usage"]["completion_tokens"] == 5
    assert body["kv_transfer_params"] is None  # a decode returns none (vLLM: only do_remote_decode does)
    # cached_tokens: what the prefiller had cached (vLLM 0.32), not the decode side's full hit
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    await until(lambda: prefill.pool.num_free_blocks == free_before, what="the pulled blocks are freed")
    assert await _counter(cluster.urls[0], "eksinfer_nixl_pinned_blocks") == 0
    d = cluster.urls[1]
    assert await _counter(d, "vllm:nixl_xfer_time_seconds_count") == 1
    blocks = len(first["kv_transfer_params"]["remote_block_ids"][0])
    bytes_expected = blocks * BASE.block_size * decode.perf.kv_bytes_per_token
    assert await _counter(d, "vllm:nixl_bytes_transferred_sum") == bytes_expected
    # contiguous blocks coalesce: one descriptor per layer (what a real vLLM CPU pull posts)
    assert await _counter(d, "vllm:nixl_num_descriptors_sum") == decode.perf.num_layers
    assert (
        await _counter(
            d, 'vllm:prompt_tokens_cached_by_source_total{engine="1",model_name="llama-3.1-8b",source="p2p"}'
        )
        == n
    )
    # the prompt counts as cached on the decode engine, from an external source, where vLLM counts it
    assert await _counter(d, "vllm:external_prefix_cache_hits_total") == n
    assert await _counter(d, "vllm:external_prefix_cache_queries_total") == n
    source = 'vllm:prompt_tokens_by_source_total{engine="1",model_name="llama-3.1-8b",source='
    assert await _counter(d, source + '"external_kv_transfer"}') == n
    assert await _counter(d, source + '"local_compute"}') == 0
    assert await _counter(d, "vllm:prompt_tokens_cached_total") == n
    assert await _counter(d, "vllm:nixl_num_failed_transfers_total") == 0


async def test_chat_both_hops_and_a_streamed_decode_through_the_openai_sdk(
    start: StartCluster, client: Sdk
) -> None:
    cluster = await _pd(start)
    prefill_sdk, decode_sdk = client(cluster.urls[0]), client(cluster.urls[1])
    messages: Any = [{"role": "user", "content": PROMPT}]
    first = await prefill_sdk.chat.completions.create(
        model="llama-3.1-8b",
        messages=messages,
        max_tokens=1,
        extra_body={"kv_transfer_params": PREFILL_PARAMS},
    )
    params = (first.model_extra or {})["kv_transfer_params"]
    assert list(params) == VLLM_KEYS
    assert params["remote_request_id"].startswith(first.id + "-")
    stream = await decode_sdk.chat.completions.create(
        model="llama-3.1-8b",
        messages=messages,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"kv_transfer_params": params},
    )
    text, usage, extras = "", None, []
    async for chunk in stream:
        extras.append((chunk.model_extra or {}).get("kv_transfer_params"))
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text
    assert usage is not None
    assert usage.completion_tokens == 6
    assert usage.prompt_tokens == first.usage.prompt_tokens
    assert extras
    assert all(e is None for e in extras)
    await until(lambda: len(cluster.engines[0].nixl.pinned) == 0, what="prefill blocks released")  # type: ignore[union-attr]
    assert await _counter(cluster.urls[1], "vllm:external_prefix_cache_hits_total") == usage.prompt_tokens


async def test_a_streamed_prefill_returns_no_params_but_still_pins(start: StartCluster, client: Sdk) -> None:
    """vLLM returns kv_transfer_params in non-streamed responses only; the blocks are pinned regardless,
    so a client that streams its prefill strands them until the lease runs out."""
    cluster = await _pd(start)
    sdk = client(cluster.urls[0])
    stream = await sdk.completions.create(
        model="llama-3.1-8b",
        prompt=PROMPT,
        max_tokens=1,
        stream=True,
        extra_body={"kv_transfer_params": PREFILL_PARAMS},
    )
    chunks = [c async for c in stream]
    assert chunks
    assert all((c.model_extra or {}).get("kv_transfer_params") is None for c in chunks)
    assert len(cluster.engines[0].nixl.pinned) == 1  # type: ignore[union-attr]


async def test_stranded_blocks_are_reclaimed_after_the_lease(start: StartCluster) -> None:
    cluster = await _pd(start)
    prefill = cluster.engines[0]
    nixl = prefill.nixl
    assert nixl is not None
    clock = FakeClock()
    nixl.pinned.clock = clock  # the lease runs on this clock from the next pin on
    free_before = prefill.pool.num_free_blocks
    first = await _prefill(cluster.urls[0])
    blocks = len(first["kv_transfer_params"]["remote_block_ids"][0])
    clock.advance(29.0)  # vLLM 0.32's default lease is 30 s
    assert nixl.reap() == 0
    assert prefill.pool.num_free_blocks == free_before - blocks
    clock.advance(1.0)
    assert nixl.reap() == 1
    assert prefill.pool.num_free_blocks == free_before
    p = cluster.urls[0]
    assert await _counter(p, "vllm:nixl_num_kv_expired_reqs_total") == 1
    assert await _counter(p, "eksinfer_nixl_expired_blocks_total") == blocks
    assert await _counter(p, "eksinfer_nixl_pinned_blocks") == 0
    # a decode that comes too late cannot read them: vLLM's default policy fails the request
    status, body = await _post(
        cluster.urls[1],
        "/v1/completions",
        {"prompt": PROMPT, "max_tokens": 3, "kv_transfer_params": first["kv_transfer_params"]},
    )
    assert status == 500, body
    assert await _counter(cluster.urls[1], "vllm:nixl_num_failed_transfers_total") == 1


async def test_heartbeats_extend_the_lease_of_a_queued_decode(start: StartCluster) -> None:
    """The decode side renews the lease of a request that has not pulled yet (vLLM: every lease / 6 s,
    to now + lease x 2/3); the prefill side's registry honours it."""
    cluster = await _pd(start)
    nixl = cluster.engines[0].nixl
    assert nixl is not None
    clock = FakeClock()
    nixl.pinned.clock = clock
    first = await _prefill(cluster.urls[0])
    rid = first["kv_transfer_params"]["remote_request_id"]
    clock.advance(25.0)
    assert nixl.serve_heartbeat([rid, "unknown"]) == 1  # lease now ends at +25 + 20 s
    clock.advance(10.0)  # 35 s after the pin: past the original 30 s lease
    assert nixl.reap() == 0
    clock.advance(10.0)
    assert nixl.reap() == 1


async def test_late_decode_recomputes_with_the_recompute_policy(start: StartCluster) -> None:
    kv = KvTransferConfig.from_json(
        '{"kv_connector":"NixlConnector","kv_role":"kv_both","kv_load_failure_policy":"recompute"}'
    )
    cluster = await _pd(start, kv_transfer=kv)
    nixl = cluster.engines[0].nixl
    assert nixl is not None
    clock = FakeClock()
    nixl.pinned.clock = clock
    first = await _prefill(cluster.urls[0])
    clock.advance(31.0)
    assert nixl.reap() == 1
    status, body = await _post(
        cluster.urls[1],
        "/v1/completions",
        {"prompt": PROMPT, "max_tokens": 3, "kv_transfer_params": first["kv_transfer_params"]},
    )
    assert status == 200
    assert body["usage"]["completion_tokens"] == 3
    d = cluster.urls[1]
    source = 'vllm:prompt_tokens_by_source_total{engine="1",model_name="llama-3.1-8b",source='
    assert await _counter(d, source + '"local_compute"}') == body["usage"]["prompt_tokens"]
    assert await _counter(d, source + '"external_kv_transfer"}') == 0
    assert await _counter(d, "vllm:nixl_num_failed_transfers_total") == 1


async def test_a_decode_with_the_prompt_cached_pulls_nothing_but_frees_the_prefill(
    start: StartCluster,
) -> None:
    cluster = await _pd(start)
    warm = await _post(cluster.urls[1], "/v1/completions", {"prompt": PROMPT + " tail", "max_tokens": 1})
    assert warm[0] == 200
    first = await _prefill(cluster.urls[0])
    status, body = await _post(
        cluster.urls[1],
        "/v1/completions",
        {"prompt": PROMPT + " tail", "max_tokens": 2, "kv_transfer_params": first["kv_transfer_params"]},
    )
    assert status == 200, body
    await until(lambda: len(cluster.engines[0].nixl.pinned) == 0, what="the notification freed them")  # type: ignore[union-attr]


async def test_transfer_time_scales_with_prompt_length_and_link(start: StartCluster) -> None:
    """Modelled seconds = KV bytes of the blocks pulled / the link's GB/s (catalog: H100 NVLink 450 GB/s,
    p5.48xlarge EFA 3200 Gb/s over 8 GPUs, TCP one 10 Gb/s flow)."""
    seconds: dict[tuple[str, int], float] = {}
    for link in ("nvlink", "efa", "tcp"):
        cluster = await _pd(start, kv_link=link)
        for blocks in (20, 40):
            prompt = [100 + blocks + i % 97 for i in range(blocks * BASE.block_size)]  # exact block counts
            first = await _prefill(cluster.urls[0], prompt)
            status, _ = await _post(
                cluster.urls[1],
                "/v1/completions",
                {"prompt": prompt, "max_tokens": 1, "kv_transfer_params": first["kv_transfer_params"]},
            )
            assert status == 200
            seconds[(link, blocks)] = cluster.engines[1].nixl.last_transfer_s  # type: ignore[union-attr]
        await cluster.stop()
    for link in ("nvlink", "efa", "tcp"):
        assert seconds[(link, 40)] == pytest.approx(2 * seconds[(link, 20)], rel=1e-9)
    assert seconds[("tcp", 20)] / seconds[("efa", 20)] == pytest.approx(50 / (10 / 8), rel=1e-9)
    assert seconds[("efa", 20)] / seconds[("nvlink", 20)] == pytest.approx(450 / 50, rel=1e-9)
    assert seconds[("efa", 20)] > 0


async def test_bad_and_incomplete_params(start: StartCluster) -> None:
    cluster = await _pd(start)
    status, body = await _post(
        cluster.urls[1], "/v1/completions", {"prompt": "hi", "max_tokens": 1, "kv_transfer_params": [1]}
    )
    assert status == 400
    assert body["error"]["param"] == "kv_transfer_params"
    # do_remote_prefill without where to pull from: vLLM logs and prefills locally
    status, body = await _post(
        cluster.urls[1],
        "/v1/completions",
        {"prompt": "hi there", "max_tokens": 2, "kv_transfer_params": {"do_remote_prefill": True}},
    )
    assert status == 200
    assert body["usage"]["completion_tokens"] == 2
    # a wrong engine id at the right address: the handshake refuses it
    first = await _prefill(cluster.urls[0])
    wrong = {**first["kv_transfer_params"], "remote_engine_id": "someone-else"}
    status, body = await _post(
        cluster.urls[1], "/v1/completions", {"prompt": PROMPT, "max_tokens": 2, "kv_transfer_params": wrong}
    )
    assert status == 500
    assert await _counter(cluster.urls[1], "vllm:nixl_num_failed_transfers_total") == 1


async def test_without_a_connector_params_are_ignored(start: StartCluster) -> None:
    cluster = await start(1)
    body = await _prefill(cluster.urls[0])
    assert body["kv_transfer_params"] is None
    assert cluster.engines[0].pool.num_free_blocks == cluster.engines[0].pool.num_gpu_blocks - 1


@pytest.mark.slow
async def test_prefill_and_decode_in_separate_processes(start: StartCluster) -> None:
    """A prefill `eksinfer sim` process and a decode engine elsewhere: only the side channel connects them."""
    side = free_port()
    proc = await asyncio.create_subprocess_exec(
        *[
            *CLI,
            "--port",
            "0",
            "--time-scale",
            "0",
            "--num-gpu-blocks-override",
            "256",
            "--max-model-len",
            "2048",
            "--kv-transfer-config",
            '{"kv_connector":"NixlConnector","kv_role":"kv_producer","engine_id":"pf"}',
            "--nixl-side-channel-port",
            str(side),
        ],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), DEADLINE_S)).decode()
        assert f"both role, NIXL side channel localhost:{side}" not in line  # a kv_producer says so
        assert f"prefill role, NIXL side channel localhost:{side}" in line, line
        url = line.split()[2].rstrip(",")
        consumer = KvTransferConfig.from_json('{"kv_connector":"NixlConnector","kv_role":"kv_consumer"}')
        decode = await start(1, **{**PD, "kv_transfer": consumer})
        first = await _prefill(url)
        assert first["kv_transfer_params"]["remote_engine_id"] == "pf"
        assert first["kv_transfer_params"]["remote_port"] == side
        status, body = await _post(
            decode.urls[0],
            "/v1/completions",
            {"prompt": PROMPT, "max_tokens": 2, "kv_transfer_params": first["kv_transfer_params"]},
        )
        assert status == 200, body
        await until(lambda: _pinned_zero(url), what="the pull released the prefill process's blocks")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), DEADLINE_S)


async def _pinned_zero(url: str) -> bool:
    return await _counter(url, "eksinfer_nixl_pinned_blocks") == 0


def test_cli_refuses_bad_kv_transfer_config_in_one_line() -> None:
    out = subprocess.run([*CLI, "--kv-transfer-config", "{bad"], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stderr.strip()) == (
        2,
        "error: --kv-transfer-config: not valid JSON: Expecting property name enclosed in double quotes",
    )
    out = subprocess.run([*CLI, "--prefill-replicas", "1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: --prefill-replicas: needs --kv-transfer-config")


@pytest.mark.parametrize(
    ("value", "field", "message"),
    [
        ("[]", "--kv-transfer-config", "must be a JSON object"),
        ('{"kv_connector":"NixlConnector"}', "--kv-transfer-config.kv_role", "must be one of kv_producer"),
        (
            '{"kv_connector":"P2pNcclConnector","kv_role":"kv_both"}',
            "--kv-transfer-config.kv_connector",
            "the simulator implements NixlConnector only",
        ),
        (
            '{"kv_connector":"NixlConnector","kv_role":"kv_both","kv_ip":"x"}',
            "--kv-transfer-config.kv_ip",
            "unknown",
        ),
        (
            '{"kv_connector":"NixlConnector","kv_role":"kv_both","kv_port":"1"}',
            "--kv-transfer-config.kv_port",
            "bad",
        ),
        (
            '{"kv_connector":"NixlConnector","kv_role":"kv_both","kv_load_failure_policy":"retry"}',
            "--kv-transfer-config.kv_load_failure_policy",
            "must be fail or recompute",
        ),
        (
            '{"kv_connector":"NixlConnector","kv_role":"kv_both","kv_connector_extra_config":{"kv_lease_duration":0}}',
            "--kv-transfer-config.kv_connector_extra_config.kv_lease_duration",
            "must be a number of seconds > 0",
        ),
    ],
)
def test_kv_transfer_config_names_the_bad_field(value: str, field: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        KvTransferConfig.from_json(value)
    assert err.value.field == field
    assert err.value.args[0].startswith(message)


def test_kv_transfer_config_defaults_are_vllms() -> None:
    kv = KvTransferConfig.from_json('{"kv_connector":"NixlConnector","kv_role":"kv_both"}')
    assert (kv.lease_s, kv.heartbeat_s, kv.lease_extension_s) == (30.0, 5.0, 20.0)
    assert kv.kv_load_failure_policy == "fail"
    assert len(kv.engine_id) == 36  # a UUID, as vLLM draws one
    assert kv.for_replica(2, 4, "kv_consumer").engine_id == kv.engine_id + "_dp2"
    assert kv.for_replica(0, 1).engine_id == kv.engine_id


def test_pinned_blocks_release_extend_and_expire_on_an_injected_clock() -> None:
    pool = BlockPool(32, 16)
    clock = FakeClock()
    pinned = PinnedBlocks(pool, lease_s=30.0, clock=clock)
    tables = []
    for rid in ("a", "b", "c"):
        table = BlockTable()
        assert pool.allocate(table, 40, ())  # 3 blocks each
        pinned.pin(rid, table)
        tables.append(table)
    assert (len(pinned), pinned.num_blocks, pool.num_free_blocks) == (3, 9, 31 - 9)
    assert pinned.release("a")
    assert not pinned.release("a")
    assert pool.num_free_blocks == 31 - 6
    clock.advance(20.0)
    assert pinned.extend(["b", "zzz"], 20.0) == 1  # b now lasts until +40 s
    clock.advance(10.0)
    assert pinned.reap() == ["c"]
    assert (pinned.num_expired, pinned.num_expired_blocks, pool.num_free_blocks) == (1, 3, 31 - 3)
    clock.advance(9.9)
    assert pinned.reap() == []
    clock.advance(0.1)
    assert pinned.reap() == ["b"]
    assert pool.num_free_blocks == 31
    assert pinned.next_expiry() is None


def test_link_bandwidths_come_from_the_catalog() -> None:
    gpu, instance = get_gpu("H100"), get_instance("p5.48xlarge")
    assert link_gbytes_per_s("nvlink", "H100", 2) == 2 * gpu.nvlink_gbps
    assert link_gbytes_per_s("efa", "H100", 8) == instance.efa_gbps / 8
    assert link_gbytes_per_s("efa", "H100", 1) == instance.efa_gbps / 8 / instance.gpus
    assert link_gbytes_per_s("tcp", "H100", 8) == TCP_FLOW_GBPS / 8
    assert link_gbytes_per_s("efa", "H100", 1, override_gbps=800) == 100
    assert transfer_s(10**9, 50.0) == pytest.approx(0.02)


def test_descriptors_coalesce_contiguous_blocks() -> None:
    assert descriptors([1, 2, 3, 4], 2) == 2
    assert descriptors([1, 2, 7, 8, 10], 3) == 9
    assert descriptors([], 4) == 0


async def test_a_decode_that_goes_away_mid_pull_lets_the_prefill_free_its_blocks(start: StartCluster) -> None:
    """A client gone while its KV is in flight: the decode engine stops the pull and notifies the prefill
    engine (vLLM frees the prefill's blocks the same way), so nothing stays stranded until the lease."""
    cluster = await _pd(start, time_scale=1.0, kv_link_gbps=1e-3)  # 1 Mbit/s: the pull takes minutes
    prefill, decode = cluster.engines
    first = await _prefill(cluster.urls[0])
    assert len(prefill.nixl.pinned) == 1  # type: ignore[union-attr]
    body = {"prompt": PROMPT, "max_tokens": 2, "kv_transfer_params": first["kv_transfer_params"]}
    async with aiohttp.ClientSession() as s:
        task = asyncio.create_task(s.post(cluster.urls[1] + "/v1/completions", json=body))
        await until(lambda: len(decode.scheduler.loading) == 1, what="the decode request waits for its KV")
        fetch = (
            'vllm:num_requests_kv_fetch_by_stage{engine="1",model_name="llama-3.1-8b",stage="in_progress"}'
        )
        assert await _counter(cluster.urls[1], fetch) == 1
        assert await _counter(cluster.urls[1], "vllm:num_requests_waiting") == 1  # vLLM counts it waiting
        async with s.get(cluster.urls[0] + "/metrics") as r:  # a kv_producer has no such gauge, as vLLM
            assert "vllm:num_requests_kv_fetch_by_stage" not in await r.text()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await until(lambda: len(prefill.nixl.pinned) == 0, what="the prefill freed the abandoned blocks")  # type: ignore[union-attr]
    await until(lambda: not decode.scheduler.loading, what="the decode side dropped the request")
    assert decode.pool.num_free_blocks == decode.pool.num_gpu_blocks - 1
    assert await _counter(cluster.urls[0], "vllm:nixl_num_kv_expired_reqs_total") == 0


async def test_a_queued_decode_renews_the_prefill_lease_over_the_side_channel(start: StartCluster) -> None:
    """The decode request waits behind a busy engine (max_num_seqs 1); its engine heartbeats the prefill
    engine, which moves the lease to now + 2/3 of it. The prefill's lease runs on a fake clock."""
    p = await start(1, **{**PD, "kv_transfer": NIXL.for_replica(0, 1, "kv_producer")})
    fast = KvTransferConfig.from_json(
        '{"kv_connector":"NixlConnector","kv_role":"kv_consumer",'
        '"kv_connector_extra_config":{"kv_lease_duration":0.6}}'  # heartbeats every 0.1 s
    )
    d = await start(1, **{**PD, "kv_transfer": fast, "max_num_seqs": 1})
    nixl = p.engines[0].nixl
    assert nixl is not None
    clock = FakeClock()
    nixl.pinned.clock = clock
    first = await _prefill(p.urls[0])
    rid = first["kv_transfer_params"]["remote_request_id"]
    assert nixl.pinned.next_expiry() == clock.now + 30.0
    set_slow_token_s(d, 0.05)
    async with aiohttp.ClientSession() as s:
        busy = asyncio.create_task(
            s.post(
                d.urls[0] + "/v1/completions", json={"prompt": "hold", "max_tokens": 2000, "ignore_eos": True}
            )
        )
        await until(lambda: len(d.engines[0].scheduler.running) == 1, what="the decode engine is busy")
        body = {"prompt": PROMPT, "max_tokens": 2, "kv_transfer_params": first["kv_transfer_params"]}
        queued = asyncio.create_task(s.post(d.urls[0] + "/v1/completions", json=body))
        clock.advance(25.0)
        before = nixl.heartbeats_served
        await until(lambda: nixl.heartbeats_served > before, what="a heartbeat reached the prefill engine")
        assert nixl.pinned.next_expiry() == clock.now + 20.0  # 25 s in: renewed to 45 s, past the first 30
        assert rid in nixl.pinned
        busy.cancel()
        set_slow_token_s(d, 0.0)
        async with await queued as r:
            assert r.status == 200
    await until(lambda: len(nixl.pinned) == 0, what="the pull released the blocks")


@pytest.mark.parametrize(
    ("replicas", "changes", "field"),
    [
        (2, {"prefill_replicas": 2}, "--prefill-replicas"),
        (1, {"kv_link": "infiniband"}, "--kv-link"),
        (1, {"kv_link_gbps": 0.0}, "--kv-link-gbps"),
        (1, {"nixl_side_channel_port": 70000}, "--nixl-side-channel-port"),
    ],
)
async def test_bad_pd_options_name_their_flag(
    start: StartCluster, replicas: int, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(UsageError) as err:  # ConfigError is one too
        await start(replicas, **{**PD, **changes})
    assert err.value.field == field
