"""Fleet simulation speed: a 24-hour trace of 200,000 requests, goal under 60 s on one core.

Prints, side by side in one run:
1. single steps vs macro-steps on the same one-hour slice (the same results, checked; the speed-up);
2. the whole day, diurnal and bursty, under each fleet: 32 static replicas (the most replicas the goal
   names), the static-peak fleet, and the scaling policies (KEDA on queue depth, KEDA as `render` writes it,
   SLO-predictive), each as CPU seconds of this process (`time.process_time`; wall seconds too, which other
   load on the machine inflates), the ratio to the 60 s goal (below 1 meets it), and the policy's
   attainment, GPU-hours, peak replicas and scale events (so a speed change that moved a result shows).
Plan: Llama-3.3-70B on g6e.12xlarge (4 x L40S) for 4 requests/s; traces: diurnal, mean 2.31 requests/s
(peak 3.7), and bursty (bursts of 3x base about hourly, same mean); prompts 1,024 and outputs 256 tokens
on average, half with a shared prefix.
Run: `make bench ARGS=autoscale` (`--requests=N`, `--traces=diurnal,bursty`, `--policies=keda-render,...`).
"""

from __future__ import annotations

import math
import time

from eksinfer.autoscale.capacity import build_perf, fleet_spec
from eksinfer.autoscale.fleet import Fleet
from eksinfer.autoscale.policies import Policy, StaticPolicy, make_policy
from eksinfer.autoscale.report import summarize
from eksinfer.autoscale.trace import DAY_S, TraceShape, bursty_trace, diurnal_trace, rate_series
from eksinfer.autoscale.whatif import work_factor
from eksinfer.catalog import get_model
from eksinfer.deploy.autoscale import trigger_thresholds
from eksinfer.planner import make_plan
from eksinfer.planner.request import Constraints, PlanRequest, Traffic

GOAL_S = 60.0


def main(argv: list[str]) -> None:
    requests = 200_000
    traces = ["diurnal", "bursty"]
    policies = ["keda-queue", "keda-render", "slo-predictive"]
    for arg in argv:
        if arg.startswith("--requests="):
            requests = int(arg.split("=", 1)[1])
        elif arg.startswith("--traces="):
            traces = [t for t in arg.split("=", 1)[1].split(",") if t]
        elif arg.startswith("--policies="):
            policies = [p for p in arg.split("=", 1)[1].split(",") if p]
    if unknown := set(traces) - {"diurnal", "bursty"}:
        raise SystemExit(f"--traces: unknown {', '.join(sorted(unknown))}; known: diurnal, bursty")
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
    shape = TraceShape(seed=1)
    days = {"diurnal": trace, "bursty": bursty_trace(requests / DAY_S / (5 / 6 + 3 / 6), shape)}
    print(
        "trace        fleet                   CPU s  wall s  CPU/goal  attain  GPU-h  peak  events"
        "  engine steps  macro-runs"
    )
    for trace_name in traces:
        day = days[trace_name]
        factor = work_factor(day, spec, perf, plan.traffic.shared_prefix_ratio)
        peak_rate = max(rate_series(day, 300.0, max(day[-1].arrival_s, 300.0)))
        peak = max(1, math.ceil(peak_rate * factor / spec.capacity_per_replica))
        fleets: list[tuple[str, Policy]] = [
            ("static:32", StaticPolicy(32)),  # the most replicas the goal names (past the plan's cap)
            (f"static:{peak} (peak)", StaticPolicy(peak)),
        ]
        for text in policies:
            fleets.append((text, make_policy(text, spec, th, peak_replicas=peak, work_factor=factor)))
        for name, policy in fleets:
            t0, c0 = time.perf_counter(), time.process_time()
            res = Fleet(day, spec, perf, policy).run()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            s = summarize(res, spec.ttft_slo_s, spec.tpot_slo_s)
            events = s.scale_ups + s.scale_downs
            print(
                f"{trace_name:<12} {name:<22} {cpu:6.1f} {wall:7.1f}  {cpu / GOAL_S:8.2f}  "
                f"{s.attainment:6.2%} {s.gpu_hours:6.1f} {s.peak_replicas:5d} {events:7d}"
                f"  {res.steps:12,} {res.macro_runs:11,}",
                flush=True,
            )
