"""Rate targets are sized with the open-loop queue: capacity below saturation, a knee, a latency curve."""

from __future__ import annotations

from eksinfer.catalog import get_model
from eksinfer.planner import Constraints, PlanRequest, Traffic, make_plan


def test_rate_target_plan_shows_knee_and_saturation() -> None:
    target = 4.0
    plan = make_plan(
        PlanRequest(
            get_model("llama-3.3-70b"),
            Traffic(requests_per_s=target),
            constraints=Constraints(instance_families=("p5",)),
        )
    )
    pred = plan.prediction
    assert pred.knee_requests_per_s is not None
    assert pred.saturation_requests_per_s is not None
    assert 0 < pred.knee_requests_per_s < pred.saturation_requests_per_s
    assert (
        target * 1.2 <= pred.requests_per_s <= pred.saturation_requests_per_s
    )  # SLO capacity, with headroom
    assert pred.ttft_s * 2 <= plan.slo.ttft_s  # the open-loop TTFT at the target meets the p99 allowance
    ttfts = [p.ttft_s for p in pred.load_curve if p.ttft_s is not None]
    assert ttfts == sorted(ttfts)
    assert ttfts[-1] > 5 * ttfts[0]  # past the knee the queue takes over
    rates = [p.requests_per_s for p in pred.load_curve]
    assert rates[-1] < pred.saturation_requests_per_s


def test_disaggregated_plans_queue_prefill_and_decode_without_a_knee_row() -> None:
    plan = make_plan(
        PlanRequest(get_model("glm-5"), Traffic(input_tokens=8000, output_tokens=500, requests_per_s=2.0))
    )
    assert plan.mode == "disaggregated"
    assert plan.prediction.knee_requests_per_s is None  # the knee row is for aggregated engines
    assert plan.prediction.load_curve == []
    # prefill engines as an M/M/c queue and decode engines as a flow-equivalent server, sized with headroom
    assert plan.prediction.requests_per_s >= 2.0 * 1.2
    assert plan.prediction.ttft_s * 2 <= plan.slo.ttft_s
    assert plan.prediction.tpot_s * 1.1 <= plan.slo.tpot_s
