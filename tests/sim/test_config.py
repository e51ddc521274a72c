"""Options: one-line errors naming the flag, and sizing taken from the performance model when unset."""

from __future__ import annotations

from dataclasses import replace

import pytest

from eksinfer.errors import UsageError
from eksinfer.sim.config import FaultOptions, SimOptions, build_perf, resolve_engine_sizing


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"block_size": 0}, "--block-size"),
        ({"block_size": 7}, "--block-size: must be one of 1, 8, 16"),
        ({"gpu_memory_utilization": 1.5}, "--gpu-memory-utilization"),
        ({"time_scale": -1.0}, "--time-scale"),
        ({"num_gpu_blocks": 1}, "--num-gpu-blocks-override"),
        ({"prefix_caching_hash_algo": "xxhash"}, "--prefix-caching-hash-algo"),
        ({"faults": FaultOptions(error_rate=2.0)}, "--fault-error-rate"),
        ({"faults": FaultOptions(stall_s=-1.0)}, "--fault-stall-s"),
    ],
)
def test_bad_options_name_the_flag(changes: dict[str, object], flag: str) -> None:
    with pytest.raises(UsageError, match=flag):
        replace(SimOptions(), **changes).validate()  # type: ignore[arg-type]


def test_sizing_comes_from_the_performance_model() -> None:
    options = SimOptions(model="llama-3.1-8b", gpu="H100")
    perf = build_perf(options)
    sizing = resolve_engine_sizing(options, perf)
    assert sizing.num_gpu_blocks == perf.num_gpu_blocks > 10_000  # ~60 GB of KV at 128 KiB per token
    assert (sizing.max_num_seqs, sizing.max_num_batched_tokens) == (1024, 8192)  # vLLM's defaults on H100
    small = SimOptions(model="llama-3.1-8b", gpu="L4", gpu_memory_utilization=0.9)
    assert resolve_engine_sizing(small, build_perf(small)).max_num_batched_tokens == 2048
    explicit = replace(options, num_gpu_blocks=100, max_num_seqs=3, max_model_len=512)
    sizing = resolve_engine_sizing(explicit, build_perf(explicit))
    assert (sizing.num_gpu_blocks, sizing.max_num_seqs, sizing.max_model_len) == (100, 3, 512)


def test_unchunked_prefill_needs_a_budget_of_max_model_len() -> None:
    options = SimOptions(enable_chunked_prefill=False, max_model_len=4096, max_num_batched_tokens=1024)
    with pytest.raises(UsageError, match="--max-num-batched-tokens"):
        resolve_engine_sizing(options, build_perf(options))


def test_max_model_len_must_fit_in_the_kv_pool() -> None:
    options = SimOptions(num_gpu_blocks=65, max_model_len=2048)  # 64 usable blocks x 16 = 1024 tokens
    with pytest.raises(UsageError, match="--max-model-len"):
        resolve_engine_sizing(options, build_perf(options))
    capped = SimOptions(num_gpu_blocks=65)
    assert resolve_engine_sizing(capped, build_perf(capped)).max_model_len == 1024
