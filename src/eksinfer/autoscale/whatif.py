"""`eksinfer autoscale` as a library: simulate policies over a trace, summarise, recommend, plot.

The work factor scales the plan's SLO capacity (measured at the plan's mean prompt and output lengths) to
the trace's mix: GPU seconds per request = uncached prompt tokens x p + output tokens x d, with p and d the
performance model's per-token prefill and decode times (a full prefill chunk; a decode step at the plan's
concurrency). Static peak provisioning is the busiest 5 minutes of the trace in replicas of that capacity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from eksinfer.autoscale.capacity import FleetSpec, build_perf, engine_role, fleet_spec
from eksinfer.autoscale.fleet import FleetResult, simulate
from eksinfer.autoscale.policies import KedaPolicy, Policy, StaticPolicy, make_policy
from eksinfer.autoscale.recommendation import (
    RECOMMENDATION_SCHEMA,
    Recommendation,
    RecommendedBehavior,
    RecommendedEvidence,
    RecommendedTrigger,
)
from eksinfer.autoscale.report import Summary, summarize
from eksinfer.autoscale.trace import TraceRequest, rate_series
from eksinfer.errors import ConfigError

if TYPE_CHECKING:
    from eksinfer.perf import EnginePerf
    from eksinfer.planner.schema import Plan

DEFAULT_POLICIES = ("static", "keda-queue", "keda-kv", "keda-ttft", "keda-render", "slo-predictive")


@dataclass(slots=True)
class WhatIf:
    plan: Plan
    spec: FleetSpec
    trace_name: str
    requests: int
    work_factor: float
    peak_replicas: int
    results: list[FleetResult]
    summaries: list[Summary]
    policies: list[Policy]


def work_factor(
    trace: Sequence[TraceRequest], spec: FleetSpec, perf: EnginePerf, shared_ratio: float
) -> float:
    mbt = spec.core.max_num_batched_tokens
    p = perf.step_time_s(
        prefill_tokens=mbt, prefill_attention_pairs=mbt * mbt, decode_seqs=0, decode_context_tokens=0
    ) / max(1, mbt)
    batch = max(1, min(spec.core.max_num_seqs, 64))
    ctx = batch * (spec.input_tokens + spec.output_tokens // 2)
    d = (
        perf.step_time_s(
            prefill_tokens=0, prefill_attention_pairs=0, decode_seqs=batch, decode_context_tokens=ctx
        )
        / batch
    )
    planned = spec.input_tokens * (1 - shared_ratio) * p + spec.output_tokens * d
    n = max(1, len(trace))
    uncached = sum(r.input_tokens - (r.prefix_tokens if r.prefix_group >= 0 else 0) for r in trace) / n
    out = sum(r.output_tokens for r in trace) / n
    return (uncached * p + out * d) / planned if planned > 0 else 1.0


def run_whatif(
    plan: Plan,
    trace: list[TraceRequest],
    policy_texts: Sequence[str],
    *,
    trace_name: str,
    progress: Callable[[str], None] | None = None,
) -> WhatIf:
    from eksinfer.deploy.autoscale import trigger_thresholds

    if not trace:
        raise ConfigError("the trace has no requests", field="--trace")
    spec = fleet_spec(plan)
    perf = build_perf(spec)
    factor = work_factor(trace, spec, perf, plan.traffic.shared_prefix_ratio)
    last = trace[-1].arrival_s
    peak_rate = max(rate_series(trace, 300.0, max(last, 300.0)))
    peak = max(1, math.ceil(peak_rate * factor / spec.capacity_per_replica))
    thresholds = trigger_thresholds(plan, engine_role(plan))
    policies = [
        make_policy(t, spec, thresholds, peak_replicas=peak, work_factor=factor) for t in policy_texts
    ]
    results = []
    for policy in policies:
        results.append(simulate(trace, spec, perf, policy, progress=progress))
    summaries = [summarize(r, spec.ttft_slo_s, spec.tpot_slo_s) for r in results]
    return WhatIf(plan, spec, trace_name, len(trace), factor, peak, results, summaries, policies)


def recommend(w: WhatIf, target_attainment: float) -> Recommendation:
    """The cheapest policy (GPU-hours) that reaches the target attainment; else the best attainment."""
    pairs = list(zip(w.policies, w.summaries, strict=True))
    meeting = [pr for pr in pairs if pr[1].attainment >= target_attainment]
    policy, summary = (
        min(meeting, key=lambda pr: pr[1].gpu_hours)
        if meeting
        else max(pairs, key=lambda pr: pr[1].attainment)
    )
    spec = w.spec
    triggers: list[RecommendedTrigger] = []
    static = None
    if isinstance(policy, KedaPolicy):
        b = policy.behavior
        for name, value in policy.thresholds.items():
            lead = policy.lead_s if name == "forecast" else 0.0
            triggers.append(RecommendedTrigger(name=name, threshold=round(value, 4), lead_s=round(lead)))
        max_replicas = b.max_replicas
    else:
        assert isinstance(policy, StaticPolicy)
        static = policy.replicas
        max_replicas = policy.replicas
    from eksinfer.autoscale.policies import render_behavior

    b = policy.behavior if isinstance(policy, KedaPolicy) else render_behavior(spec, min(2, static or 1))
    behavior = RecommendedBehavior(
        min_replicas=static or b.min_replicas,
        max_replicas=max_replicas,
        polling_s=round(b.polling_s),
        cooldown_s=round(b.cooldown_s),
        up_window_s=round(b.up_window_s),
        up_pods=b.up_pods,
        up_period_s=round(b.up_period_s),
        down_window_s=round(b.down_window_s),
        down_pods=b.down_pods,
        down_period_s=round(b.down_period_s),
    )
    return Recommendation(
        schema_version=RECOMMENDATION_SCHEMA,
        plan=w.plan.name,
        policy=summary.policy,
        static_replicas=static,
        triggers=triggers,
        behavior=behavior,
        max_nodes=max(1, math.ceil(max_replicas / spec.replicas_per_node)),
        evidence=RecommendedEvidence(
            trace=w.trace_name,
            requests=w.requests,
            attainment=round(summary.attainment, 4),
            gpu_hours=round(summary.gpu_hours, 2),
            cost_usd=round(summary.cost_usd, 2),
            compared={
                s.policy: {"attainment": round(s.attainment, 4), "gpu_hours": round(s.gpu_hours, 2)}
                for s in w.summaries
            },
        ),
    )


def plot(w: WhatIf, path: Path) -> None:
    """Load, replicas and TTFT P90 over the day, one line per policy (needs the [plots] extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    first = w.results[0]
    hours = [t / 3600 for t in first.series_t]
    axes[0].plot(hours, first.series_rate, color="black", linewidth=0.8)
    axes[0].set_ylabel("arrivals / s (1 min)")
    axes[0].set_title(f"{w.plan.name}: {w.trace_name}, {w.requests:,} requests")
    for res in w.results:
        h = [t / 3600 for t in res.series_t]
        axes[1].step(h, res.series_pods, where="post", label=res.policy, linewidth=1)
        axes[2].plot(h, res.series_ttft_p90, label=res.policy, linewidth=0.8)
    axes[1].set_ylabel("replicas (asked for)")
    axes[1].legend(fontsize=8, ncol=3)
    axes[2].axhline(w.spec.ttft_slo_s, color="red", linestyle="--", linewidth=0.8, label="TTFT target")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("TTFT P90 (1 min), s")
    axes[2].set_xlabel("hour of the trace")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
