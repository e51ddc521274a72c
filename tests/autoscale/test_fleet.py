"""The fleet simulation: macro-steps give the results of single steps; routing, scaling, accounting."""

from __future__ import annotations

import math
import random

import pytest

from eksinfer.autoscale.capacity import build_perf, fleet_spec
from eksinfer.autoscale.fleet import Fleet, simulate
from eksinfer.autoscale.policies import StaticPolicy, make_policy
from eksinfer.autoscale.replica import Replica, group_digests
from eksinfer.autoscale.report import summarize
from eksinfer.autoscale.trace import TraceRequest, TraceShape, diurnal_trace
from eksinfer.deploy.autoscale import trigger_thresholds
from eksinfer.planner.schema import Plan
from eksinfer.sim.core import CoreConfig
from eksinfer.sim.scheduler import SimRequest


def _drive(macro: bool, num_blocks: int, n: int = 150) -> tuple[dict[str, tuple[float, float, int]], Replica]:
    from eksinfer.catalog import get_gpu, get_model
    from eksinfer.perf import build_engine_perf

    perf = build_engine_perf(get_model("llama-3.1-8b"), get_gpu("H100"))
    cfg = CoreConfig(
        num_gpu_blocks=num_blocks,
        block_size=16,
        max_num_seqs=48,
        max_num_batched_tokens=2048,
        max_model_len=4096,
        natural_output_tokens=0,
    )
    done: dict[str, tuple[float, float, int]] = {}
    first: dict[str, float] = {}

    def on_token(rep: Replica, req: object, now: float) -> None:
        from eksinfer.sim.scheduler import SimRequest

        assert isinstance(req, SimRequest)
        if req.num_output_tokens == 1:
            first[req.request_id] = now
        if req.finish_reason is not None:
            done[req.request_id] = (first[req.request_id], now, req.num_cached_tokens)

    rep = Replica(0, cfg, perf, macro=macro, on_token=on_token)
    rng = random.Random(11)
    t = 0.0
    arrivals = []
    for i in range(n):
        t += rng.expovariate(5.0)
        inp = rng.randint(40, 1500)
        shared = rng.randint(0, inp)
        if i % 5 == 0:  # a cached prefix that leaves one prompt token to compute: a 1-token prefill
            inp = 16 * rng.randint(2, 8) + 1
            shared = inp - 1
        arrivals.append((t, i, inp, rng.randint(1, 300), group_digests(rng.randrange(4), shared // 16)))
    k = 0
    while k < len(arrivals) or rep.next_event_s < math.inf:
        if k < len(arrivals) and arrivals[k][0] < rep.next_event_s:
            at, i, inp, out, prefix = arrivals[k]
            rep.add(i, inp, out, prefix, at)
            k += 1
        else:
            rep.step_end()
    return done, rep


@pytest.mark.parametrize(
    "num_blocks", [20_000, 420]
)  # plenty of KV, and so little that requests are preempted
def test_macro_steps_match_single_steps(num_blocks: int) -> None:
    macro, rm = _drive(True, num_blocks)
    single, rs = _drive(False, num_blocks)
    assert macro.keys() == single.keys()
    assert len(macro) == 150
    for rid, (first, end, cached) in single.items():
        assert macro[rid][0] == pytest.approx(first, rel=1e-9, abs=1e-9)
        assert macro[rid][1] == pytest.approx(end, rel=1e-9, abs=1e-9)
        assert macro[rid][2] == cached
    assert rm.core.num_steps == rs.core.num_steps
    assert rm.core.simulated_s == pytest.approx(rs.core.simulated_s, rel=1e-9)
    assert rm.scheduler.stats.preemptions == rs.scheduler.stats.preemptions
    assert rm.pool.free_block_ids() == rs.pool.free_block_ids()  # the same blocks free, same LRU order
    assert set(rm.pool._cached) == set(rs.pool._cached)
    assert rm.num_runs > 10  # the macro side did take runs of steps
    if num_blocks == 420:
        assert rs.scheduler.stats.preemptions > 0
    assert sum(c for _, _, c in single.values()) > 0  # prefix groups did hit


def _burst_trace(burst: tuple[float, float], rate: float, end_s: float) -> list[TraceRequest]:
    rng = random.Random(2)
    trace = []
    t = 0.0
    while True:
        t += rng.expovariate(rate if burst[0] <= t < burst[1] else 0.1)
        if t >= end_s:
            return trace
        group = rng.randrange(3)
        inp = rng.randint(200, 1500)
        trace.append(TraceRequest(t, inp, rng.randint(50, 300), group, inp // 2))


def _small_trace(seed: int = 5) -> list[TraceRequest]:
    shape = TraceShape(duration_s=3600.0, input_tokens=600, output_tokens=100, seed=seed)
    return diurnal_trace(0.25, shape, amplitude=0.5, peak_hour=0.5)


def test_fleet_with_autoscaling_is_the_same_with_and_without_macro_steps(plan_70b: Plan) -> None:
    spec = fleet_spec(plan_70b)
    perf = build_perf(spec)
    trace = _burst_trace(burst=(300.0, 660.0), rate=2.5, end_s=1800.0)
    th = trigger_thresholds(plan_70b, plan_70b.roles[0])
    out = []
    for macro in (True, False):
        policy = make_policy("keda-running:3", spec, th, peak_replicas=3, work_factor=1.0)
        res = Fleet(trace, spec, perf, policy, macro=macro, duration_s=1800.0).run()
        out.append(res)
    a, b = out
    assert a.ttft_s == pytest.approx(b.ttft_s, rel=1e-9, abs=1e-9)
    assert a.tpot_s == pytest.approx(b.tpot_s, rel=1e-9, abs=1e-9)
    assert (a.scale_ups, a.scale_downs, a.node_seconds) == (b.scale_ups, b.scale_downs, b.node_seconds)
    assert a.cached_tokens == b.cached_tokens
    assert a.scale_ups + a.scale_downs > 0  # the policy did act
    assert a.macro_runs > 0
    assert b.macro_runs == 0


def test_static_fleet_accounting_and_routing_spreads_load(plan_70b: Plan) -> None:
    spec = fleet_spec(plan_70b)
    perf = build_perf(spec)
    trace = _small_trace()
    res = simulate(trace, spec, perf, StaticPolicy(3))
    s = summarize(res, spec.ttft_slo_s, spec.tpot_slo_s)
    # three warm nodes for the two hours, nothing launched or removed
    assert res.node_seconds == pytest.approx(3 * 3600.0)
    assert s.gpu_hours == pytest.approx(3 * spec.gpus_per_node)
    assert s.cost_usd == pytest.approx(3 * spec.node_price_per_hour)
    assert (s.peak_replicas, s.scale_ups, s.scale_downs) == (3, 0, 0)
    assert all(not math.isnan(t) for t in res.ttft_s)
    assert 0 < s.gpu_busy_share < 1
    assert 0 < s.kv_hit_rate < 1
    assert len(s.attainment_per_hour) == 1


def test_scale_up_waits_for_node_start_up_and_scale_down_drains(plan_70b: Plan) -> None:
    spec = fleet_spec(plan_70b)
    perf = build_perf(spec)
    # quiet, then a wall of traffic from 10 to 30 min, quiet again until 90 min; the wall is three replicas'
    # planned capacity, so the two replicas render starts with cannot take it however fast the model says
    # an engine is
    rate = 3.0 * spec.capacity_per_replica
    trace = _burst_trace(burst=(600.0, 1800.0), rate=rate, end_s=5400.0)
    th = trigger_thresholds(plan_70b, plan_70b.roles[0])
    policy = make_policy("keda-render", spec, th, peak_replicas=4, work_factor=1.0)
    fleet = Fleet(trace, spec, perf, policy)
    res = fleet.run()
    assert res.scale_ups >= 1
    assert res.scale_downs >= 1
    new_pods = [p for p in fleet.pods if p.created_s > 0]
    assert new_pods
    for pod in new_pods:
        if pod.node.launched_s == pod.created_s:  # on a new node: the plan's node start-up
            assert pod.ready_s == pytest.approx(pod.created_s + spec.node_startup_s)
    gone = [p for p in fleet.pods if p.gone_s is not None and p.ready_s <= p.gone_s and p.created_s > 0]
    assert gone  # some were drained after the burst
    assert all(p.inflight_requests == 0 for p in fleet.pods)
    assert all(not math.isnan(x) for x in res.ttft_s)


def test_a_prompt_chunk_of_one_token_is_a_prefill_not_a_run() -> None:
    """513 prompt tokens in steps of 512 leave one token: that step completes the prompt and emits the
    first token, so it must not be folded into a decode run."""
    from eksinfer.catalog import get_gpu, get_model
    from eksinfer.perf import build_engine_perf

    perf = build_engine_perf(get_model("llama-3.1-8b"), get_gpu("H100"))
    cfg = CoreConfig(
        num_gpu_blocks=1000,
        block_size=16,
        max_num_seqs=8,
        max_num_batched_tokens=512,
        max_model_len=4096,
        natural_output_tokens=0,
    )
    seen: dict[bool, list[tuple[int, float]]] = {}
    for macro in (True, False):
        tokens: list[tuple[int, float]] = []

        def record(rep: Replica, req: SimRequest, now: float, out: list[tuple[int, float]] = tokens) -> None:
            out.append((req.num_output_tokens, now))

        rep = Replica(0, cfg, perf, macro=macro, on_token=record)
        rep.add(0, 513, 40, [], 0.0)
        while rep.next_event_s < math.inf:
            rep.step_end()
        seen[macro] = tokens
    assert [n for n, _ in seen[True]] == [1, 40]  # the first token and the last
    assert [t for _, t in seen[True]] == pytest.approx([t for _, t in seen[False]], rel=1e-12)
