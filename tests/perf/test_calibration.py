"""The vendored calibration runs load from a clone, and the model keeps its fitted accuracy on them.

The medians are printed by `make bench ARGS=plan`; here they guard against a change that quietly breaks
the fit (deterministic arithmetic over fixed data, no timing)."""

from __future__ import annotations

import statistics

from benchmarks import bench_plan


def test_vendored_runs_are_in_the_repository() -> None:
    fitted = bench_plan.load_rows()
    extra = bench_plan.load_holdout()
    assert len(fitted) == 219
    assert {(r.model, r.system, r.precision) for r in extra} == bench_plan.HOLDOUT
    assert all(r.ttft_ms > 0 and r.tpot_ms > 0 for r in fitted + extra)


def test_calibration_medians_hold() -> None:
    compared = bench_plan.compare_all(bench_plan.load_rows())
    assert len(compared) == 219

    def median(field: str) -> float:
        return statistics.median(abs(c.err(field)) for c in compared)

    # issue 18's goals on calibration data: TPOT <= 10 %, TTFT <= 12 %, throughput <= 8 %
    assert median("tpot_ms") <= 10.0
    assert median("tok_s") <= 8.0
    assert median("ttft_ms") <= 12.0


def test_runs_count_as_async_by_version_engine_or_measurement_date() -> None:
    # vLLM v0.14.0 made async scheduling the default; SGLang overlaps by default; an unversioned run counts
    # by its measurement date
    assert not bench_plan.overlapped("vllm", "0.12.0", "")
    assert bench_plan.overlapped("vllm", "0.14.0", "")
    assert bench_plan.overlapped("vllm", "0.19.0", "")
    assert bench_plan.overlapped("sglang", "0.5.6", "")
    assert not bench_plan.overlapped("vllm", "", "source_file=x.csv; measured=2025-10-29T00:00:00.000Z")
    assert bench_plan.overlapped("vllm", "", "measured=2026-04-22T00:00:00.000Z")
    assert not bench_plan.overlapped("vllm", "", "no date")
    rows = bench_plan.load_holdout()
    assert {r.model for r in rows if r.async_scheduling} == {"moonshotai/Kimi-K2.5", "MiniMaxAI/MiniMax-M2.5"}
    assert not any(r.async_scheduling for r in bench_plan.load_rows())


def test_held_out_medians_hold() -> None:
    # issue 18's held-out goals met at this commit (TTFT, 23 % on all runs, is not: see docs/planner.md); a
    # guard, not a fit: no constant is chosen on these runs. 595 = the 487 of 2026-12-03 and 108 runs added
    # 2026-12-04 (MiniMax-M2.5 FP8 H100, MiniMax-M2.5 and Kimi K2.5 NVFP4 B200)
    extra = bench_plan.compare_all(bench_plan.load_holdout())
    held = [c for c in extra if (c.row.model, c.row.system, c.row.precision) != bench_plan.MOE_FIT]
    assert len(held) == 595
    assert statistics.median(abs(c.err("tpot_ms")) for c in held) <= 15.0
    assert statistics.median(abs(c.err("tok_s")) for c in held) <= 15.0


KIMI_B200_INT4 = ("moonshotai/Kimi-K2.5", "b200_sxm", "int4")


def test_moe_rows_hold() -> None:
    # issue 18's "MoE rows within 20 %" on TPOT and throughput for the held-out MoE models it meets at this
    # commit (TTFT of MiniMax-M2.5 does not: see docs/planner.md); a guard, not a fit: only Kimi K2.5 H200
    # chose the MoE constants. Qwen3-235B (vLLM 0.12, TP / DP / EP) meets it only with 0.12's DeepGEMM
    # padding rows (perf.engine.deepgemm_pads_moe): 27-45 % on TPOT without them
    # NVFP4 MoE on B200 (MiniMax-M2.5, Kimi K2.5: TPOT 26-28 % slower than measured) does not and is left
    # out here; the bench prints it
    extra = bench_plan.compare_all(bench_plan.load_holdout())
    groups = {
        ("MiniMaxAI/MiniMax-M2.5", "b200_sxm", "fp8"): 152 + 20 + 15,
        ("MiniMaxAI/MiniMax-M2.5", "h200_sxm", "fp8"): 84,
        ("MiniMaxAI/MiniMax-M2.5", "h100_sxm", "fp8"): 15,
        ("moonshotai/Kimi-K2.5", "b200_sxm", "int4"): 45,
        ("Qwen/Qwen3-235B-A22B-FP8", "h200_sxm", "fp8"): 26 + 15 + 4 + 6,
    }
    for (model, system, precision), runs in groups.items():
        rows = [
            c for c in extra if (c.row.model, c.row.system, c.row.precision) == (model, system, precision)
        ]
        assert len(rows) == runs
        for field in ("tpot_ms", "tok_s"):
            assert statistics.median(abs(c.err(field)) for c in rows) <= 20.0, (model, system, field)
    kimi_b200 = [c for c in extra if (c.row.model, c.row.system, c.row.precision) == KIMI_B200_INT4]
    assert statistics.median(abs(c.err("ttft_ms")) for c in kimi_b200) <= 20.0
    qwen = [c for c in extra if c.row.model == "Qwen/Qwen3-235B-A22B-FP8"]
    assert statistics.median(abs(c.err("ttft_ms")) for c in qwen) <= 20.0
