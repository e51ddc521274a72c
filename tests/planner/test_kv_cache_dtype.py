"""FP8 KV cache in the memory model, the search, the `why` lines and the vLLM arguments."""

from __future__ import annotations

import pytest

from eksinfer.catalog import get_gpu, get_model
from eksinfer.errors import UsageError
from eksinfer.perf import build_engine_perf, max_running, predict_aggregated
from eksinfer.planner import Constraints, Plan, PlanRequest, Slo, Traffic, make_plan

LONG_BATCH = Traffic(input_tokens=8000, output_tokens=1000, concurrency=256)


def _plan(traffic: Traffic, slo: Slo, **constraints: object) -> Plan:
    return make_plan(PlanRequest(get_model("llama-3.3-70b"), traffic, slo, Constraints(**constraints)))  # type: ignore[arg-type]


def test_fp8_kv_holds_twice_the_sequences_and_ends_the_queueing() -> None:
    # 70B FP8 on TP 2 x H100, 50 users with 5k-token prompts: a BF16 cache holds 39 of them and the rest
    # queue for a slot; an FP8 cache holds all 50.
    model, gpu = get_model("llama-3.3-70b"), get_gpu("H100")
    kw = {"tensor_parallel_size": 2, "precision": "fp8", "max_model_len": 8192}
    bf16 = build_engine_perf(model, gpu, kv_cache_dtype="auto", **kw)  # type: ignore[arg-type]
    fp8 = build_engine_perf(model, gpu, kv_cache_dtype="fp8", **kw)  # type: ignore[arg-type]
    assert fp8.kv_bytes_per_token * 2 == bf16.kv_bytes_per_token == 327_680
    assert fp8.num_gpu_blocks == pytest.approx(2 * bf16.num_gpu_blocks, rel=0.01)
    assert max_running(bf16, 5000, 500) == 39
    assert max_running(fp8, 5000, 500) == 78
    slow = predict_aggregated(bf16, input_tokens=5000, output_tokens=500, concurrency=50)
    fast = predict_aggregated(fp8, input_tokens=5000, output_tokens=500, concurrency=50)
    assert slow.kv_limited
    assert not fast.kv_limited
    assert fast.ttft_s < slow.ttft_s / 4


def test_search_takes_fp8_kv_when_it_saves_nodes_and_says_why() -> None:
    slo = Slo.from_preset("batch", ttft_s=8.0)  # 256 queued 8k prompts: the batch preset's 5 s binds first
    searched = _plan(LONG_BATCH, slo, instance_families=("p5",))
    forced = _plan(LONG_BATCH, slo, instance_families=("p5",), kv_cache_dtype="auto")
    engine = searched.roles[0].engine
    assert engine.kv_cache_dtype == "fp8"
    args = engine.vllm_args
    assert args[args.index("--kv-cache-dtype") + 1] == "fp8"
    assert "accuracy caveat" in searched.why["precision"]
    assert forced.roles[0].engine.kv_cache_dtype == "auto"
    assert "accuracy caveat" not in forced.why["precision"]
    assert searched.cost.monthly_usd < forced.cost.monthly_usd
    assert all(a.kv_cache_dtype == "auto" for a in forced.alternatives)


def test_equal_cost_keeps_the_bf16_cache() -> None:
    # 1 req/s of an 8B model: one H100 either way, so one p5 node either way
    request = PlanRequest(get_model("llama-3.1-8b"), constraints=Constraints(instance_families=("p5",)))
    plan = make_plan(request)
    assert plan.roles[0].engine.kv_cache_dtype == "auto"
    assert "--kv-cache-dtype" in plan.roles[0].engine.vllm_args


def test_forced_fp8_kv_and_bad_values() -> None:
    plan = _plan(Traffic(), Slo(), kv_cache_dtype="fp8")
    assert plan.roles[0].engine.kv_cache_dtype == "fp8"
    assert "fp8" in plan.why["precision"]
    with pytest.raises(UsageError, match="--kv-cache-dtype"):
        _plan(Traffic(), Slo(), kv_cache_dtype="int8")
