"""Policy decisions: forecasts, KEDA triggers, the SLO capacity from the plan's load curve, bad names."""

from __future__ import annotations

import dataclasses
import math

import pytest

from eksinfer.autoscale.capacity import (
    TPOT_P99_ALLOWANCE,
    TTFT_P99_ALLOWANCE,
    FleetSpec,
    fleet_spec,
    slo_capacity,
)
from eksinfer.autoscale.policies import KedaPolicy, Observation, StaticPolicy, make_policy, predict_linear
from eksinfer.deploy.autoscale import trigger_thresholds
from eksinfer.errors import ConfigError
from eksinfer.planner.schema import Plan


def _obs(
    now: float,
    current: int,
    *,
    waiting: int = 0,
    running: int = 0,
    kv: float = 0.0,
    ttft: float | None = None,
    rates: list[float] | None = None,
) -> Observation:
    return Observation(now, current, current, waiting, running, kv, ttft, rates or [])


def test_predict_linear_extrapolates_a_least_squares_line() -> None:
    assert predict_linear([1.0, 2.0, 3.0, 4.0], 2) == pytest.approx(6.0)
    assert predict_linear([2.0, 2.0, 2.0], 10) == pytest.approx(2.0)
    assert predict_linear([5.0], 3) == 5.0
    assert predict_linear([], 3) == 0.0


def test_slo_capacity_interpolates_where_the_load_curve_crosses_the_slo(plan_70b: Plan) -> None:
    replicas = plan_70b.roles[0].replicas
    cap = slo_capacity(plan_70b, replicas) * replicas
    slo = plan_70b.slo
    meets = [
        p.requests_per_s
        for p in plan_70b.prediction.load_curve
        if p.ttft_s is not None
        and TTFT_P99_ALLOWANCE * p.ttft_s <= slo.ttft_s
        and TPOT_P99_ALLOWANCE * p.tpot_s <= slo.tpot_s
    ]
    fails = [p.requests_per_s for p in plan_70b.prediction.load_curve if p.requests_per_s > max(meets)]
    assert max(meets) <= cap <= min(fails)


def _pinned(plan: Plan) -> FleetSpec:
    """The plan's fleet with 4 planned replicas (HPA scale-up: 4 pods a period) and room for 8, so the
    trigger arithmetic below does not move with the replica count the performance model gives the plan."""
    return dataclasses.replace(fleet_spec(plan), planned_replicas=4, max_replicas=8)


def test_keda_policies_scale_on_their_own_trigger(plan_70b: Plan) -> None:
    spec = _pinned(plan_70b)
    th = trigger_thresholds(plan_70b, plan_70b.roles[0])
    queue = make_policy("keda-queue:2", spec, th, peak_replicas=4, work_factor=1.0)
    assert queue.decide(_obs(0, 2, waiting=9, kv=3.0)) == 5  # ceil(9 / 2); the KV sum is not its trigger
    kv = make_policy("keda-kv", spec, th, peak_replicas=4, work_factor=1.0)
    assert kv.decide(_obs(0, 2, waiting=9, kv=3.0)) == 4  # ceil(3.0 / 0.8)
    ttft = make_policy("keda-ttft", spec, th, peak_replicas=4, work_factor=1.0)
    assert ttft.decide(_obs(0, 2, ttft=3 * spec.ttft_slo_s)) == 6  # Value: ceil(2 x 3)
    render = make_policy("keda-render", spec, th, peak_replicas=4, work_factor=1.0)
    assert render.decide(_obs(0, 2, waiting=9, kv=3.0)) == max(
        math.ceil(9 / th["queue"]), math.ceil(3.0 / 0.8), 2
    )
    static = make_policy("static", spec, th, peak_replicas=4, work_factor=1.0)
    assert isinstance(static, StaticPolicy)
    assert static.decide(_obs(0, 4, waiting=100)) == 4


def test_slo_predictive_scales_ahead_of_a_rising_rate(plan_70b: Plan) -> None:
    spec = _pinned(plan_70b)
    th = trigger_thresholds(plan_70b, plan_70b.roles[0])
    policy = make_policy("slo-predictive:0.8", spec, th, peak_replicas=4, work_factor=1.0)
    assert isinstance(policy, KedaPolicy)
    per_replica = spec.capacity_per_replica * 0.8
    # a line rising by 1.5 replicas' worth over the lead time, now at 4.4 replicas' worth (needs 5): in the
    # plan's own units, so the test holds whatever capacity the performance model gives a replica
    slope = 1.5 * per_replica / (policy.lead_s / 60)  # req/s per minute
    rising = [4.4 * per_replica - slope * (5 - i) for i in range(6)]  # six minutes: enough to forecast
    assert rising[0] > 0
    now_need = math.ceil(rising[-1] / per_replica)
    ahead = rising[-1] + slope * policy.lead_s / 60  # where the line will be when new capacity is up
    # one replica running, so the HPA's 10 % tolerance around the current count cannot hide the forecast
    wanted = policy.decide(_obs(1800, 1, rates=rising))
    assert wanted == min(spec.max_replicas, math.ceil(ahead / per_replica))
    assert wanted > now_need
    # a falling rate never forecasts below the last minute's
    falling = list(reversed(rising))
    p2 = make_policy("slo-predictive:0.8", spec, th, peak_replicas=4, work_factor=1.0)
    assert p2.decide(_obs(1800, 2, rates=falling)) >= math.ceil(falling[-1] / per_replica)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("keda-cpu", "unknown policy 'keda-cpu'; known: static, keda-queue"),
        ("keda-queue:lots", "positive number"),
        ("keda-queue:-1", "positive number"),
        ("slo-predictive:1.5", "utilisation"),
        ("keda-render:3", "no parameter"),
        ("static:nan", "positive number"),
    ],
)
def test_bad_policies_name_the_flag(plan_70b: Plan, text: str, words: str) -> None:
    spec = fleet_spec(plan_70b)
    th = trigger_thresholds(plan_70b, plan_70b.roles[0])
    with pytest.raises(ConfigError) as err:
        make_policy(text, spec, th, peak_replicas=4, work_factor=1.0)
    assert err.value.field == "--policy"
    assert words in str(err.value)
