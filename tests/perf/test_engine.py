"""Step-time model: hand-computed roofline terms, monotonicity, and the steady-state serving model."""

from __future__ import annotations

import pytest

from eksinfer.catalog import get_gpu, get_model
from eksinfer.perf import build_engine_perf, max_running, predict_aggregated, predict_decode, predict_prefill
from eksinfer.perf import engine as E


def _step(perf: E.EnginePerf, p: int = 0, pairs: int = 0, d: int = 0, ctx: int = 0) -> float:
    return perf.step_time_s(
        prefill_tokens=p, prefill_attention_pairs=pairs, decode_seqs=d, decode_context_tokens=ctx
    )


def test_single_decode_is_weights_plus_kv_over_bandwidth() -> None:
    model, gpu = get_model("llama-3.1-8b"), get_gpu("H100")
    serial = build_engine_perf(model, gpu, async_scheduling=False)  # vLLM < 0.14
    overlapped = build_engine_perf(model, gpu)  # the default: async scheduling (vLLM >= 0.14)
    assert overlapped.async_scheduling
    assert not serial.async_scheduling
    bw = 3350e9 * E.ETA_BW
    weights_read = (model.total_params - model.vocab_size * model.hidden_size) * 2  # embedding is a gather
    gpu_s = weights_read / bw + 1000 * 131_072 * E.KV_READ_COST / bw + 32 * E.LAYER_OVERHEAD_S
    host_s = E.STEP_OVERHEAD_S + E.SEQ_OVERHEAD_S  # one decoding sequence
    assert _step(serial, d=1, ctx=1000) == pytest.approx(gpu_s + host_s, rel=1e-9)
    # the host work of the next step runs while this one is on the GPU: the longer of the two sets the pace
    assert _step(overlapped, d=1, ctx=1000) == pytest.approx(max(gpu_s, host_s), rel=1e-9)
    assert _step(serial) == _step(overlapped) == 0.0


def test_the_cache_is_read_at_its_cost_and_vllm_0_10_fp8_decode_slower() -> None:
    # decode attention reads the cache at ETA_BW / KV_READ_COST; vLLM 0.10's FP8-cache decode
    # SLOW_FP8_KV_DECODE times slower still; nothing else in the step moves
    model, gpu = get_model("llama-3.1-8b"), get_gpu("H100")

    def kv_term(kv_cache_dtype: str, slow: bool = False) -> float:
        perf = build_engine_perf(
            model, gpu, kv_cache_dtype=kv_cache_dtype, async_scheduling=False, slow_fp8_kv_decode=slow
        )
        return _step(perf, d=1, ctx=20_000) - _step(perf, d=1, ctx=0)

    bf16 = kv_term("auto")
    assert bf16 == pytest.approx(20_000 * 131_072 * E.KV_READ_COST / (3350e9 * E.ETA_BW), rel=1e-9)
    assert kv_term("fp8") == pytest.approx(bf16 / 2, rel=1e-9)  # half the bytes
    assert kv_term("fp8", slow=True) == pytest.approx(E.SLOW_FP8_KV_DECODE * bf16 / 2, rel=1e-9)
    assert kv_term("auto", slow=True) == pytest.approx(bf16, rel=1e-9)  # a BF16 cache is not slowed
    assert E.slow_fp8_kv_decode("0.10.2")
    assert not E.slow_fp8_kv_decode("0.11.0")
    assert not E.slow_fp8_kv_decode("")  # no release recorded: the releases plans deploy


def test_async_scheduling_hides_host_work_until_it_is_the_longer_part() -> None:
    model, gpu = get_model("llama-3.1-8b"), get_gpu("H100")
    serial = build_engine_perf(model, gpu, async_scheduling=False)
    overlapped = build_engine_perf(model, gpu)
    for seqs in (1, 64, 256, 1024):
        host = E.STEP_OVERHEAD_S + E.SEQ_OVERHEAD_S * seqs
        gpu_s = _step(serial, d=seqs, ctx=seqs * 1000) - host
        assert _step(overlapped, d=seqs, ctx=seqs * 1000) == pytest.approx(max(gpu_s, host), rel=1e-9)
    # pipeline parallelism keeps vLLM's serial loop (v0.14.0 release notes)
    pp = build_engine_perf(get_model("llama-3.3-70b"), gpu, tensor_parallel_size=4, pipeline_parallel_size=2)
    assert not pp.async_scheduling


def test_large_prefill_is_compute_bound_with_causal_attention() -> None:
    model, gpu = get_model("llama-3.1-8b"), get_gpu("H100")
    perf = build_engine_perf(model, gpu, async_scheduling=False)
    tokens = 4096
    flops_rate = 989e12 * E.ETA_GEMM
    linear = 2 * (model.active_params - model.vocab_size * model.hidden_size) * tokens / flops_rate
    head = 2 * model.vocab_size * model.hidden_size / flops_rate  # logits for the last prompt token only
    attn = 4 * 32 * 32 * 128 * (tokens * tokens / 2) / (989e12 * E.ETA_ATTN)  # causal: half the pairs
    expected = linear + head + attn + E.STEP_OVERHEAD_S + 32 * E.LAYER_OVERHEAD_S
    assert _step(perf, p=tokens, pairs=tokens * tokens) == pytest.approx(expected, rel=1e-9)
    # a second chunk after 4096 cached tokens: pairs 4096 x 8192, causal 4096 x (4096 + 2048)
    second = _step(perf, p=tokens, pairs=tokens * 2 * tokens)
    assert second - _step(perf, p=tokens, pairs=tokens * tokens) == pytest.approx(2 * attn, rel=1e-9)


def test_step_time_grows_with_batch_context_and_shrinks_with_tp() -> None:
    model, gpu = get_model("llama-3.3-70b"), get_gpu("H100")
    tp4 = build_engine_perf(model, gpu, tensor_parallel_size=4)
    tp8 = build_engine_perf(model, gpu, tensor_parallel_size=8)
    assert (
        _step(tp4, d=8, ctx=8000)
        < _step(tp4, d=64, ctx=64000)
        < _step(tp4, p=512, pairs=512**2, d=64, ctx=64000)
    )
    assert _step(tp8, d=32, ctx=32000) < _step(tp4, d=32, ctx=32000)


def test_moe_decode_touches_more_experts_as_the_batch_grows() -> None:
    perf = build_engine_perf(
        get_model("qwen3-235b-a22b"), get_gpu("H200"), tensor_parallel_size=8, precision="fp8"
    )
    one, many = _step(perf, d=1, ctx=1000), _step(perf, d=64, ctx=64000)
    # 1 token touches 8 of 128 experts per layer; 64 tokens touch 128 x (1 - (120/128)^64) = 125 of them
    fixed = perf._overhead_s + perf._comm_fixed_s
    assert many - fixed > 5 * (one - fixed)
    assert perf._expert_keep == pytest.approx(120 / 128)


def test_pipeline_stage_hand_off_costs_latency() -> None:
    model, gpu = get_model("llama-3.3-70b"), get_gpu("H100")
    tp8 = build_engine_perf(model, gpu, tensor_parallel_size=8, async_scheduling=False)
    pp2 = build_engine_perf(model, gpu, tensor_parallel_size=8, pipeline_parallel_size=2)
    added = _step(pp2, d=16, ctx=16000) - _step(tp8, d=16, ctx=16000)
    assert added == pytest.approx(E.P2P_LATENCY_S + 16 * 8192 * 2 / 50e9, rel=1e-6)


def test_kv_overflow_makes_ttft_explode() -> None:
    # Measured (AIC silicon, vLLM 0.12, H100, Qwen3-32B BF16, 4096/1024, 128 concurrent):
    # TP2 TTFT 58.8 s because only ~50 sequences fit in KV; TP4 TTFT 1.35 s.
    model, gpu = get_model("qwen3-32b"), get_gpu("H100")
    tp2 = build_engine_perf(model, gpu, tensor_parallel_size=2, max_model_len=5120)
    tp4 = build_engine_perf(model, gpu, tensor_parallel_size=4, max_model_len=5120)
    assert max_running(tp2, 4096, 1024) < 128 <= max_running(tp4, 4096, 1024)
    slow = predict_aggregated(tp2, input_tokens=4096, output_tokens=1024, concurrency=128)
    fast = predict_aggregated(tp4, input_tokens=4096, output_tokens=1024, concurrency=128)
    assert slow.kv_limited
    assert slow.ttft_s > 20
    assert not fast.kv_limited
    assert fast.ttft_s < 3


def test_prefix_hits_cut_ttft_and_interleaving_tax_raises_tpot() -> None:
    perf = build_engine_perf(get_model("llama-3.1-8b"), get_gpu("H100"), max_model_len=8192)
    cold = predict_aggregated(perf, input_tokens=4000, output_tokens=200, concurrency=32)
    warm = predict_aggregated(perf, input_tokens=4000, output_tokens=200, concurrency=32, prefix_hit=0.75)
    assert warm.ttft_s < cold.ttft_s
    assert warm.tpot_s < cold.tpot_s
    decode_only = predict_decode(perf, input_tokens=4000, output_tokens=200, concurrency=32)
    assert decode_only.tpot_s < cold.tpot_s  # disaggregated decode pays no prefill tax
    prefill = predict_prefill(perf, input_tokens=4000)
    assert prefill.requests_per_s > 0
    assert prefill.ttft_s > 0


@pytest.mark.parametrize("budget", [512, 1024, 2048, 8192])
@pytest.mark.parametrize("concurrency", [16, 64, 128, 256])
def test_throughput_never_exceeds_what_the_step_token_budget_allows(budget: int, concurrency: int) -> None:
    # Every request spends ISL + OSL - 1 tokens of step budget, and a step of TPOT seconds holds at most
    # max_num_batched_tokens of them, so requests/s <= budget / TPOT / (ISL + OSL - 1). The old formula
    # took a lifetime of TTFT + (OSL - 1) x TPOT even when the budget bound, and broke this by up to ~2x.
    perf = build_engine_perf(
        get_model("llama-3.1-8b"),
        get_gpu("H200"),
        precision="fp8",
        max_model_len=4096,
        max_num_batched_tokens=budget,
    )
    isl, osl = 2048, 128
    point = predict_aggregated(perf, input_tokens=isl, output_tokens=osl, concurrency=concurrency)
    bound = budget / point.tpot_s / (isl + osl - 1)
    assert point.requests_per_s <= bound * (1 + 1e-9)
    assert point.output_tokens_per_s == pytest.approx(point.requests_per_s * osl)
    assert point.e2e_s == pytest.approx(point.ttft_s + (osl - 1) * point.tpot_s)
    if concurrency * (isl + osl - 1) / (osl - 1 + 1) > budget * 1.5:  # clearly budget-bound: every step full
        assert point.requests_per_s == pytest.approx(bound, rel=1e-6)


def test_ttft_queues_behind_other_prompts_tokens_at_the_marginal_prefill_cost() -> None:
    from eksinfer.perf import serving as S

    model, gpu = get_model("qwen3-32b"), get_gpu("H100")
    perf = build_engine_perf(model, gpu, tensor_parallel_size=2, max_model_len=8192, async_scheduling=False)
    isl, osl, conc = 4096, 1024, 8
    point = predict_aggregated(perf, input_tokens=isl, output_tokens=osl, concurrency=conc)
    own = S._own_prefill_s(perf, conc, isl, isl, osl)
    tau = S._prefill_token_s(perf, conc, isl, isl, osl)
    dispatch = S.DISPATCH_PER_LAYER_S * model.num_layers
    expected = (own + dispatch) * (1 + (conc - 1) / S.QUEUE_CONCURRENCY_SCALE) + (
        (conc - 1) / S.QUEUE_PROMPT_SCALE * isl * tau
    )
    assert point.ttft_s == pytest.approx(expected, rel=1e-9)
    # with async scheduling a new prompt also waits out the one step already scheduled ahead of it
    overlapped = build_engine_perf(model, gpu, tensor_parallel_size=2, max_model_len=8192)
    queued = predict_aggregated(overlapped, input_tokens=isl, output_tokens=osl, concurrency=conc)
    own = S._own_prefill_s(overlapped, conc, isl, isl, osl)
    tau = S._prefill_token_s(overlapped, conc, isl, isl, osl)
    expected = (own + dispatch) * (1 + (conc - 1) / S.QUEUE_CONCURRENCY_SCALE) + (
        (conc - 1) / S.QUEUE_PROMPT_SCALE * isl * tau
    )
    in_flight = S.step_composition(overlapped, conc, isl, isl, osl).mean_s  # a step of any kind
    assert queued.ttft_s == pytest.approx(expected + in_flight, rel=1e-9)
    # compute-bound prompt tokens: the marginal cost is the dense GEMM rate per token (within attention)
    gemm = 2 * (model.active_params - model.vocab_size * model.hidden_size) / 2 / (989e12 * E.ETA_GEMM)
    assert gemm < tau < 1.3 * gemm
