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
