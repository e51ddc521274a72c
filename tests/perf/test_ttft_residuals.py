"""The TTFT residual analysis behind docs/planner.md's TTFT decisions (`make bench ARGS="plan --residuals"`):
the TP fit, the step count and the slicing are plain arithmetic over fixed numbers."""

from __future__ import annotations

import pytest
from benchmarks import bench_plan, ttft_residuals


def test_tp_fit_recovers_a_and_b_exactly() -> None:
    points = [(tp, 150.0 + 1200.0 / tp) for tp in (1, 2, 4, 8)]
    a, b = ttft_residuals.tp_fit(points)
    assert a == pytest.approx(150.0)
    assert b == pytest.approx(1200.0)


def test_an_all_reduce_is_indistinguishable_from_a_tp_invariant_cost_in_a_tp_sweep() -> None:
    # c (TP - 1) / TP = c - c / TP: the sweep reads an all-reduce of c ms as +c in a and -c in b
    compute, all_reduce = 1200.0, 80.0
    points = [(tp, compute / tp + all_reduce * (tp - 1) / tp) for tp in (1, 2, 4, 8)]
    a, b = ttft_residuals.tp_fit(points)
    assert a == pytest.approx(all_reduce)
    assert b == pytest.approx(compute - all_reduce)


def test_tp_fit_needs_two_tp_sizes() -> None:
    with pytest.raises(ValueError, match="two tensor-parallel sizes"):
        ttft_residuals.tp_fit([(4, 100.0), (4, 110.0)])


def test_prefill_steps_count_the_budget_left_by_running_decodes() -> None:
    # 8,192-token budget: with 3 other sequences decoding, an 8,192-token prompt needs a second step
    assert ttft_residuals.prefill_steps(1024, 64) == 1
    assert ttft_residuals.prefill_steps(8192, 1) == 1
    assert ttft_residuals.prefill_steps(8192, 4) == 2
    assert ttft_residuals.prefill_steps(20000, 1) == 3


def test_slices_leave_out_runs_past_the_kv_capacity_and_report_signed_error() -> None:
    row = bench_plan.Row("m", "h200_sxm", "fp8", 8, 1024, 1024, 4, 100.0, 10.0, 400.0, version="0.19.0")
    under = bench_plan.Compared(row, ttft_ms=80.0, tpot_ms=10.0, tok_s=400.0)
    saturated = bench_plan.Compared(row, ttft_ms=5000.0, tpot_ms=10.0, tok_s=400.0, kv_limited=True)
    [(name, n, signed, residual)] = ttft_residuals.slices([under, saturated], lambda c: c.row.version)
    assert (name, n) == ("0.19.0", 1)
    assert signed == pytest.approx(-20.0)
    assert residual == pytest.approx(20.0)


def test_every_run_carries_its_recorded_version() -> None:
    fitted, extra = bench_plan.load_rows(), bench_plan.load_holdout()
    # the Llama-3.1-70B campaign recorded none: its workflow's image says 0.10.2 (llama_campaign_reading)
    assert {r.version for r in fitted} == {"0.12.0", "0.10.2"}
    assert {r.version for r in extra if r.model == "MiniMaxAI/MiniMax-M2.5"} == {
        "0.16.0",
        "0.17.0",
        "0.18.0",
        "0.19.0",
    }
