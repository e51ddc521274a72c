"""The step kinds of a closed loop (chunk steps, decode-only steps) and the MoE terms that depend on them.

A MoE layer reads E x (1 - (1 - k/E)^n) distinct experts for n tokens: concave in n, so the mean over steps
of different sizes reads fewer experts than the step at the mean tokens (the mean-field step this replaced).
Hand-computed references; no timing.
"""

from __future__ import annotations

import math

import pytest
from benchmarks.bench_plan import model_spec

from eksinfer.catalog import get_gpu, get_model
from eksinfer.perf import build_engine_perf, predict_aggregated
from eksinfer.perf import engine as E
from eksinfer.perf import serving as S
from eksinfer.perf.mix import PromptClass

MINIMAX = model_spec("MiniMaxAI/MiniMax-M2.5")  # 256 experts, top-8, FP8; the bench's config.json fields


def _step(perf: E.EnginePerf, p: float, d: float, ctx_per_seq: float, pairs: float = 0.0) -> float:
    return perf.step_time_s(
        prefill_tokens=p, prefill_attention_pairs=pairs, decode_seqs=d, decode_context_tokens=d * ctx_per_seq
    )


def _smeared(perf: E.EnginePerf, m: int, isl: int, osl: int) -> float:
    """The model before: every step carries m x ISL / K prompt tokens beside m x (OSL - 1) / K decodes."""
    return _smeared_at(perf, m, isl, osl, S.step_composition(perf, m, isl, isl, osl).lifetime)


def test_a_decode_heavy_moe_step_reads_the_experts_its_decodes_touch() -> None:
    # MiniMax-M2.5 on B200, TP 2, 8192/1024 at 4 users (vLLM 0.19): measured TPOT 9.9 ms; the smeared step
    # charged each decode step 32 prompt tokens, which wake 68 % of the 256 experts, and predicted 20.3 ms
    perf = build_engine_perf(MINIMAX, get_gpu("B200"), tensor_parallel_size=2, max_model_len=9216)
    isl, osl, users = 8192, 1024, 4
    point = predict_aggregated(perf, input_tokens=isl, output_tokens=osl, concurrency=users)
    decode_only = _step(perf, 0, users, isl + osl / 2)
    assert perf.touched_experts(users) == pytest.approx(1 - (1 - 8 / 256) ** 4)  # 12 %
    assert perf.touched_experts(users + 32) > 0.65
    # an 8,192-token prompt beside 4 decodes takes 2 chunks of the 8,192-token budget; 3 x 2 of the 1,023
    # steps a request decodes carry another user's chunk: TPOT is the decode step plus 6/1023 of a chunk's
    steps = S.step_composition(perf, users, isl, isl, osl)
    assert steps.prompt_steps == 2
    assert steps.seen_share == pytest.approx(3 * 2 / 1023)
    assert point.tpot_s == pytest.approx(steps.tpot_s)
    assert decode_only < point.tpot_s < 1.15 * decode_only
    assert point.tpot_s < 0.75 * _smeared(perf, users, isl, osl)


def test_the_expected_step_reads_the_mean_of_its_kinds_touched_experts() -> None:
    perf = build_engine_perf(MINIMAX, get_gpu("B200"), tensor_parallel_size=4, max_model_len=2048)
    kinds = (S.StepKind(0.1, 1024.0, 7.0), S.StepKind(0.9, 0.0, 8.0))
    mean_touched = 0.1 * perf.touched_experts(1031) + 0.9 * perf.touched_experts(8)
    assert mean_touched < perf.touched_experts(0.1 * 1031 + 0.9 * 8)  # Jensen: concave in tokens
    p, d = 102.4, 0.1 * 7 + 0.9 * 8
    expected = perf.step_time_s(
        prefill_tokens=p,
        prefill_attention_pairs=p * (1024 + p) / 2,
        decode_seqs=d,
        decode_context_tokens=d * (1024 + 512),
        touched_experts=mean_touched,
    )
    assert S.expected_step_s(perf, kinds, 1024, 1024.0, 1024) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("users", [4, 16, 64])
@pytest.mark.parametrize(("isl", "osl"), [(1024, 1024), (4096, 512), (8192, 1024)])
def test_for_a_dense_model_the_mean_over_step_kinds_is_the_mean_field_step(
    users: int, isl: int, osl: int
) -> None:
    # Every term but the touched experts is linear in the tokens, so a dense model's mean step is the
    # calibrated mean-field step exactly; only TPOT moves, by the request's own prompt step it does not wait
    # for (a share (m - 1) / m of the chunk steps instead of all of them)
    perf = build_engine_perf(get_model("llama-3.3-70b"), get_gpu("H100"), tensor_parallel_size=4)
    steps = S.step_composition(perf, users, isl, isl, osl)
    assert 0 < steps.chunk_share < 1
    lifetime = osl - 1 + steps.prompt_steps
    assert steps.lifetime == pytest.approx(lifetime)
    assert steps.mean_s == pytest.approx(_smeared_at(perf, users, isl, osl, lifetime), rel=1e-12)
    assert steps.seen_share == pytest.approx((users - 1) * steps.prompt_steps / (osl - 1))
    assert steps.tpot_s <= steps.mean_s


def _smeared_at(perf: E.EnginePerf, m: int, isl: int, osl: int, lifetime: float) -> float:
    p, d = m * isl / lifetime, m * (osl - 1) / lifetime
    return _step(perf, p, d, isl + osl / 2, pairs=p * (isl + p) / 2)


def test_a_lone_request_decodes_without_prompt_tokens() -> None:
    # one user: every decode step of its own request carries no prompt (its prompt was its own first step),
    # which the smeared model charged on every step
    for model, gpu, tp in (
        (get_model("llama-3.1-8b"), get_gpu("H100"), 1),
        (get_model("qwen3-235b-a22b"), get_gpu("H200"), 4),
    ):
        perf = build_engine_perf(model, gpu, tensor_parallel_size=tp, max_model_len=4096)
        point = predict_aggregated(perf, input_tokens=2048, output_tokens=256, concurrency=1)
        assert point.tpot_s == pytest.approx(_step(perf, 0, 1, 2048 + 128), rel=1e-12)


def test_when_chunks_overlap_or_the_budget_binds_every_step_carries_prompt_tokens() -> None:
    perf = build_engine_perf(MINIMAX, get_gpu("B200"), tensor_parallel_size=2, max_model_len=9216)
    full = S.step_composition(perf, 1024, 8192, 8192, 1024)  # 1,024 x 9,215 tokens over 1,025 steps
    assert full.chunk_share == full.seen_share == 1.0
    assert full.tpot_s == full.mean_s
    assert full.lifetime == pytest.approx(1024 * (8192 + 1023) / perf.max_num_batched_tokens)
    # 600 users: 1,200 two-chunk prompt steps per 1,025-step lifetime overlap, though the budget has room
    overlap = S.step_composition(perf, 600, 8192, 8192, 1024)
    assert overlap.lifetime == 1025
    assert overlap.chunk_share == overlap.seen_share == 1.0
    assert overlap.mean_s == pytest.approx(_smeared_at(perf, 600, 8192, 1024, 1025), rel=1e-12)


@pytest.mark.parametrize(("n", "exact"), [(2, 0.5642), (3, 0.8463), (4, 1.0294), (8, 1.4236), (16, 1.7660)])
def test_the_busiest_of_n_ranks_sits_at_the_expected_maximum_of_n_normals(n: int, exact: float) -> None:
    # exact values: expected largest order statistic of n standard normals (Teichroew 1956 tables)
    assert E.expected_max_normal(n) == pytest.approx(exact, abs=0.035)
    assert E.expected_max_normal(n) < math.sqrt(2 * math.log(n))  # the asymptotic bound used before
    assert E.expected_max_normal(1) == 0.0


def test_ep_assignments_spread_as_hypergeometric_picks() -> None:
    # Qwen3-235B, EP 4: a token's 8 distinct experts of 128 land on one rank's 32 as a hypergeometric draw
    perf = build_engine_perf(
        get_model("qwen3-235b-a22b"), get_gpu("H200"), tensor_parallel_size=4, expert_parallel=True
    )
    p = 0.25
    assert perf._assign_cv == pytest.approx(math.sqrt((1 - p) * 120 / 127 / (8 * p)))


def test_w4a16_experts_on_blackwell_run_at_the_hopper_rate() -> None:
    # Kimi K2.5's INT4 experts run in vLLM's Marlin MoE kernel (warp-level mma.sync), which does not reach
    # Blackwell's tcgen05 peak: the expert GEMM is no faster on B200 than on H200 (both 989 TFLOPS BF16)
    kimi = get_model("kimi-k2.5")
    h200 = build_engine_perf(kimi, get_gpu("H200"), tensor_parallel_size=8, max_model_len=8192)
    b200 = build_engine_perf(kimi, get_gpu("B200"), tensor_parallel_size=8, max_model_len=8192)
    assert b200._expert_per_token_s == pytest.approx(h200._expert_per_token_s, rel=1e-12)
    assert b200._linear_per_token_s < 0.5 * h200._linear_per_token_s  # BF16 attention / shared: tcgen05
    # FP8 experts (Blackwell's fused MoE kernels) do use Blackwell's rate, at the factor fitted on B300 runs
    qwen = get_model("qwen3-235b-a22b")
    q_h200 = build_engine_perf(qwen, get_gpu("H200"), tensor_parallel_size=8, precision="fp8")
    q_b200 = build_engine_perf(qwen, get_gpu("B200"), tensor_parallel_size=8, precision="fp8")
    factors = E.MOE_GEMM_FACTOR / E.BLACKWELL_MOE_GEMM_FACTOR
    assert q_b200._expert_per_token_s == pytest.approx(
        q_h200._expert_per_token_s * 1979 / 4500 * factors, rel=1e-3
    )


def test_blackwell_fp8_and_fp4_experts_take_the_blackwell_moe_constants() -> None:
    # the per-MoE-layer cost follows the kernels: Blackwell FP8 / FP4 experts take the B300-fitted cost,
    # Hopper FP8 and W4A16 (Marlin) experts on either GPU the Kimi-H200-fitted one
    qwen = get_model("qwen3-235b-a22b")
    layers = qwen.num_moe_layers
    cost = {
        (gpu, precision): build_engine_perf(
            qwen, get_gpu(gpu), tensor_parallel_size=8, precision=precision
        )._overhead_s
        for gpu, precision in (("H200", "fp8"), ("B200", "fp8"), ("B200", "fp4"))
    }
    gap = (E.MOE_LAYER_OVERHEAD_S - E.BLACKWELL_MOE_LAYER_OVERHEAD_S) * layers
    assert gap > 0
    assert cost["H200", "fp8"] - cost["B200", "fp8"] == pytest.approx(gap, rel=1e-9)
    assert cost["B200", "fp4"] == pytest.approx(cost["B200", "fp8"], rel=1e-12)
    kimi = get_model("kimi-k2.5")
    marlin = build_engine_perf(kimi, get_gpu("B200"), tensor_parallel_size=8, max_model_len=8192)
    assert not E.blackwell_moe(get_gpu("B200"), "int4")
    expected = E.LAYER_OVERHEAD_S * kimi.num_layers + E.MOE_LAYER_OVERHEAD_S * kimi.num_moe_layers
    assert marlin._overhead_s == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("isl", "osl", "users"), [(8192, 1024, 4), (1024, 256, 16)])
def test_decode_heavy_moe_tpot_matches_the_simulated_engine(isl: int, osl: int, users: int) -> None:
    # The simulator runs vLLM's scheduler step by step on the same step_time_s, so each step reads the
    # experts its own tokens touch: where decode steps dominate, the step kinds' TPOT is within 10 % of it
    # (the mean-field step is +98 % and +57 % here). Prefill-heavy closed loops (short outputs, many
    # users) are another matter: there the max(weights, FLOPs) of a step is convex in its tokens, which the
    # mean-field step, calibrated as it is on dense runs, does not average (docs/planner.md "MoE steps");
    # 8,192 / 256 at 4 users became one when Blackwell expert GEMMs took their B300-fitted rate (the
    # closed form 15 % under the simulator there).
    from tests.perf.test_mix import simulate

    perf = build_engine_perf(MINIMAX, get_gpu("B200"), tensor_parallel_size=2, max_model_len=isl + osl)
    _, simulated = simulate(perf, (PromptClass(1.0, isl, osl),), users, 40)
    point = predict_aggregated(perf, input_tokens=isl, output_tokens=osl, concurrency=users)
    assert point.tpot_s == pytest.approx(simulated, rel=0.10)
    assert _smeared(perf, users, isl, osl) > 1.4 * simulated


def test_dp_lockstep_shares_follow_any_rank_carrying_a_chunk() -> None:
    assert S.dp_lockstep(0.1, 0.05, 1) == (0.1, 0.05)  # one rank: unchanged
    share, seen = S.dp_lockstep(0.1, 0.05, 2)
    assert share == pytest.approx(1 - 0.9**2)  # either of two ranks has a chunk: 19 %
    assert seen == pytest.approx(1 - 0.95 * 0.9)  # its own rank's chunks or the other rank's
    share4, seen4 = S.dp_lockstep(0.1, 0.05, 4)
    assert share4 == pytest.approx(1 - 0.9**4)
    assert seen4 == pytest.approx(1 - 0.95 * 0.9**3)
    assert S.dp_lockstep(1.0, 1.0, 4) == (1.0, 1.0)


def test_dp_ranks_in_lockstep_pay_each_others_prompt_chunks_in_tpot(monkeypatch: pytest.MonkeyPatch) -> None:
    # Qwen3-235B FP8 on H200, DP 4 x TP 1, 4000/500 at 6 users (AIC, vLLM 0.12: TPOT 42.8 ms): each rank
    # decodes 1-2 sequences and rarely holds a chunk itself, but the group steps at the pace of whichever
    # rank holds one, so a request's decode steps carry a chunk's cost about four times as often
    perf = build_engine_perf(
        get_model("qwen3-235b-a22b"), get_gpu("H200"), tensor_parallel_size=1, data_parallel_size=4,
        precision="fp8", max_model_len=4608,
    )  # fmt: skip
    m, isl, osl = 6 / 4, 4000, 500
    steps = S.step_composition(perf, m, isl, isl, osl)
    rank_share = m * steps.prompt_steps / steps.lifetime
    assert 0 < rank_share < steps.chunk_share == pytest.approx(1 - (1 - rank_share) ** 4)
    monkeypatch.setattr(S, "dp_lockstep", lambda share, seen, ranks: (share, seen))
    independent = S.step_composition(perf, m, isl, isl, osl)
    assert independent.chunk_share == pytest.approx(rank_share)
    assert steps.seen_share > 3 * independent.seen_share
    assert steps.tpot_s > independent.tpot_s
    assert steps.mean_s > independent.mean_s
