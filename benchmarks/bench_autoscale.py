"""Fleet simulation speed: a 24-hour trace of 200,000 requests, goal under 60 s on one core.

Prints, side by side in one run:
1. single steps vs macro-steps on the same one-hour slice (the same results, checked; the speed-up);
2. the whole day under three fleets: 32 static replicas (the most replicas the goal names), the
   static-peak fleet and KEDA as `render` writes it (scaling, draining, node start-up), each as CPU seconds
   of this process (wall seconds too, which other load on the machine inflates) and as the ratio to the
   60 s goal (below 1 meets it).
Plan: Llama-3.3-70B on g6e.12xlarge (4 x L40S) for 4 requests/s; trace: diurnal, mean 2.31 requests/s
(peak 3.7), prompts 1,024 and outputs 256 tokens on average, half with a shared prefix.
Run: `make bench ARGS=autoscale` (`--requests N` for another size).
"""

from __future__ import annotations

import math
import time

from eksinfer.autoscale.capacity import build_perf, fleet_spec
from eksinfer.autoscale.fleet import Fleet
from eksinfer.autoscale.policies import StaticPolicy, make_policy
from eksinfer.autoscale.trace import DAY_S, TraceShape, diurnal_trace
from eksinfer.catalog import get_model
from eksinfer.deploy.autoscale import trigger_thresholds
from eksinfer.planner import make_plan
from eksinfer.planner.request import Constraints, PlanRequest, Traffic

GOAL_S = 60.0


def main(argv: list[str]) -> None:
    requests = 200_000
    for arg in argv:
        if arg.startswith("--requests="):
            requests = int(arg.split("=", 1)[1])
    plan = make_plan(
        PlanRequest(
            get_model("llama-3.3-70b"),
            Traffic(requests_per_s=4.0),
            constraints=Constraints(instance_families=("g6e",)),
        )
    )
    spec = fleet_spec(plan)
    perf = build_perf(spec)
    started = time.perf_counter()
    trace = diurnal_trace(requests / DAY_S, TraceShape(seed=1))
    print(f"trace: {len(trace):,} requests over 24 h, generated in {time.perf_counter() - started:.1f} s")

    hour = [r for r in trace if 13 * 3600 <= r.arrival_s < 14 * 3600]
    hour = [
        type(r)(r.arrival_s - 13 * 3600, r.input_tokens, r.output_tokens, r.prefix_group, r.prefix_tokens)
        for r in hour
    ]
    timings = {}
    results = {}
    for macro in (False, True):
        t0 = time.process_time()
        results[macro] = Fleet(hour, spec, perf, StaticPolicy(4), macro=macro, duration_s=3600.0).run()
        timings[macro] = time.process_time() - t0
    same = all(
        math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
        for a, b in zip(
            results[True].ttft_s + results[True].tpot_s,
            results[False].ttft_s + results[False].tpot_s,
            strict=True,
        )
    )
    speedup = timings[False] / timings[True]
    print(
        f"one peak hour ({len(hour):,} requests, 4 replicas): single steps {timings[False]:.1f} s CPU, "
        f"macro-steps {timings[True]:.1f} s CPU, speed-up x{speedup:.1f}; {results[False].steps:,} engine "
        f"steps in {results[True].macro_runs:,} runs; same latencies: {same}"
    )

    th = trigger_thresholds(plan, plan.roles[0])
    peak = math.ceil(3.7 / spec.capacity_per_replica)
    fleets = [
        ("static, 32 replicas", StaticPolicy(32)),
        (f"static peak, {peak} replicas", StaticPolicy(peak)),
        ("keda-render (scales)", make_policy("keda-render", spec, th, peak_replicas=peak, work_factor=1.0)),
    ]
    for name, policy in fleets:
        t0, c0 = time.perf_counter(), time.process_time()
        res = Fleet(trace, spec, perf, policy).run()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(
            f"24 h, {name}: {cpu:.1f} s CPU ({wall:.1f} s wall), {cpu / GOAL_S:.2f} of the 60 s goal; "
            f"{res.steps:,} engine steps in {res.macro_runs:,} macro-runs, peak {res.peak_pods} replicas"
        )
