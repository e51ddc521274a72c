"""Data-parallel attention with expert parallelism (vLLM wide EP) for MoE models: memory, step time,
search and the vLLM arguments."""

from __future__ import annotations

import math

import pytest

from eksinfer.catalog import get_gpu, get_instance, get_model
from eksinfer.errors import UsageError
from eksinfer.perf import build_engine_perf, max_running
from eksinfer.perf import engine as E
from eksinfer.perf import memory as mem
from eksinfer.planner import PlanRequest, Traffic
from eksinfer.planner.build import vllm_args
from eksinfer.planner.evaluate import evaluate_aggregated
from eksinfer.planner.search import Misses, Shape, enumerate_shapes

QWEN = get_model("qwen3-235b-a22b")
H200 = get_gpu("H200")


def _perf(tp: int, dp: int) -> E.EnginePerf:
    return build_engine_perf(
        QWEN, H200, tensor_parallel_size=tp, data_parallel_size=dp, precision="fp8", max_model_len=8192
    )


def test_dp_replicates_attention_and_shards_experts() -> None:
    tp8, dp8 = _perf(8, 1), _perf(1, 8)
    experts = QWEN.routed_expert_params * 1.0  # FP8: one byte per weight
    rest = mem.weight_bytes(QWEN, "fp8") - experts
    assert tp8.weight_bytes_per_gpu == pytest.approx(rest / 8 + experts / 8)
    assert dp8.weight_bytes_per_gpu == pytest.approx(rest + experts / 8)
    assert dp8.gpus == tp8.gpus == 8
    # each DP rank has its own KV cache and scheduler: the engine holds DP x the rank's sequences
    per_rank = min(dp8.max_num_seqs, dp8.kv_capacity_tokens // 1152)  # 1024 + 128 tokens, whole blocks
    assert max_running(dp8, 1024, 256) == 8 * per_rank


def test_dp_step_pays_all_to_all_and_reads_its_share_of_experts() -> None:
    dp8 = _perf(1, 8)
    moe = QWEN.num_moe_layers
    assert dp8._comm_fixed_s == pytest.approx(2 * moe * E.A2A_LATENCY_S)  # no TP all-reduce at TP 1
    assert dp8._comm_per_token_s > 0
    assert dp8._ep_token_scale == 8
    one = dp8.step_time_s(
        prefill_tokens=0, prefill_attention_pairs=0, decode_seqs=1, decode_context_tokens=1000
    )
    many = dp8.step_time_s(
        prefill_tokens=0, prefill_attention_pairs=0, decode_seqs=64, decode_context_tokens=64_000
    )
    assert many > one
    with pytest.raises(UsageError, match="data_parallel_size"):
        build_engine_perf(get_model("llama-3.3-70b"), H200, data_parallel_size=2)


def test_search_offers_dp_for_moe_only_and_renders_the_flags() -> None:
    request = PlanRequest(QWEN, Traffic(requests_per_s=8.0))
    shapes = enumerate_shapes(request, 2)
    assert any(s.dp > 1 and s.tp == 1 for s in shapes)
    dense = PlanRequest(get_model("llama-3.3-70b"))
    assert all(s.dp == 1 for s in enumerate_shapes(dense, 2))
    shape = Shape(get_instance("p5en.48xlarge"), H200, 2, "aggregated", "fp8", 1, 1, dp=8)
    cand = evaluate_aggregated(request, shape, Misses())
    assert cand is not None
    args = vllm_args(request, cand, "engine")
    assert args[args.index("--data-parallel-size") + 1] == "8"
    assert "--enable-expert-parallel" in args
    assert args[args.index("--tensor-parallel-size") + 1] == "1"
    seqs = int(args[args.index("--max-num-seqs") + 1])
    assert seqs * 8 >= cand.batch  # --max-num-seqs is per DP rank


def _decode(perf: E.EnginePerf, seqs: int) -> float:
    return perf.step_time_s(
        prefill_tokens=0, prefill_attention_pairs=0, decode_seqs=seqs, decode_context_tokens=seqs * 1000
    )


def test_ep_busiest_rank_reads_more_touched_experts_than_the_mean() -> None:
    kw = {"tensor_parallel_size": 4, "precision": "fp8", "max_model_len": 8192}
    sharded = build_engine_perf(QWEN, H200, expert_parallel=False, **kw)  # type: ignore[arg-type]
    ep = build_engine_perf(QWEN, H200, expert_parallel=True, **kw)  # type: ignore[arg-type]
    assert sharded._ep_z == 0.0
    # the expected largest of 4 standard normals is 1.029 (order-statistics tables); the asymptotic
    # sqrt(2 ln 4) = 1.67 used before overstated it by 60 %
    assert ep._ep_z == pytest.approx(1.029, abs=0.03)
    assert ep._ep_z < 0.7 * math.sqrt(2 * math.log(4))
    # 4 decodes: each rank holds 32 experts; uniform routing touches f = 1 - (120/128)^4 of them on average,
    # the busiest of 4 ranks about one standard deviation more
    f = 1 - (1 - 8 / 128) ** 4
    busiest = f + ep._ep_z * (f * (1 - f) / 32) ** 0.5
    extra_read = ep._experts_read_s * (busiest - f)  # decode is memory-bound: the compute hides under it
    assert _decode(ep, 4) - _decode(sharded, 4) == pytest.approx(extra_read, rel=1e-9)
    # a big prefill chunk touches every expert on every rank and spreads its tokens evenly
    big = {"prefill_tokens": 8192, "prefill_attention_pairs": 8192 * 8192, "decode_seqs": 0}
    ratio = ep.step_time_s(**big, decode_context_tokens=0) / sharded.step_time_s(
        **big, decode_context_tokens=0
    )
    assert 1.0 < ratio < 1.02


def test_dp_without_ep_shards_experts_by_tp_and_both_gather_each_token_once() -> None:
    kw = {"tensor_parallel_size": 1, "data_parallel_size": 4, "precision": "fp8", "max_model_len": 8192}
    ep = build_engine_perf(QWEN, H200, **kw)  # type: ignore[arg-type]  # default: EP with DP
    tp_experts = build_engine_perf(QWEN, H200, expert_parallel=False, **kw)  # type: ignore[arg-type]
    assert ep.expert_parallel
    assert not tp_experts.expert_parallel
    assert tp_experts._ep_z == 0.0
    # vLLM's default all2all backend (allgather_reducescatter) all-gathers the hidden states of the other
    # DP ranks and reduce-scatters them back, with or without EP: DP - 1 copies of each token, not top-k
    hidden = QWEN.hidden_size * 2
    per_token = 2 * QWEN.num_moe_layers * 3 * hidden / (H200.interconnect_gbps * 1e9)
    assert ep._comm_per_token_s == pytest.approx(per_token)
    assert tp_experts._comm_per_token_s == pytest.approx(per_token)
    assert tp_experts.weight_bytes_per_gpu == ep.weight_bytes_per_gpu
    assert _decode(tp_experts, 8) < _decode(ep, 8)
