"""Pod-tier autoscaling: one KEDA ScaledObject per engine role, on Prometheus queries of vLLM metrics.

Thresholds come from the plan's per-replica capacity (metricType AverageValue: KEDA/HPA divide the query by
the replica count, so each number is "per replica"):

    running   sum(vllm:num_requests_running)     target 80% of the replica's concurrency, where
              concurrency = min(max_num_seqs, max_concurrency_per_replica)
    queue     sum(vllm:num_requests_waiting)     target 10% of that concurrency (at least 1); activation 1
    kv        sum(vllm:kv_cache_usage_perc)      target 0.8 (80% of KV blocks in use per replica)
    ttft      P90 TTFT over 2 min (Value)        target the SLO's TTFT

GPU capacity takes a node start-up (`nodes.node_startup_s`: boot + image + weights) to arrive, so scale-down
waits twice that before removing a replica, and scale-up adds at most the planned replica count per start-up
period (replicas still booting do not drain the queue yet, so faster scale-up only overshoots).
`cooldownPeriod` (only used for 1 -> 0) is twice the start-up too.
"""

from __future__ import annotations

import math

from eksinfer.deploy.context import Ctx, Obj
from eksinfer.planner.schema import Plan, PlanRole

POLLING_INTERVAL_S = 15


def per_replica_concurrency(ctx: Ctx, role: PlanRole) -> int:
    return concurrency_of(ctx.plan, role)


def concurrency_of(plan: Plan, role: PlanRole) -> int:
    return max(1, min(role.engine.max_num_seqs, plan.prediction.max_concurrency_per_replica))


def trigger_thresholds(plan: Plan, role: PlanRole) -> dict[str, float]:
    """The thresholds `render` writes (see the module docstring); `eksinfer autoscale` simulates them."""
    conc = concurrency_of(plan, role)
    return {
        "running": max(1, math.floor(0.8 * conc)),
        "queue": max(1, math.ceil(0.1 * conc)),
        "kv-cache": 0.8,
        "ttft": plan.slo.ttft_s,
    }


def behavior_numbers(startup_s: int, planned_replicas: int) -> dict[str, int]:
    """HPA behaviour from the node start-up time (see the module docstring)."""
    return {
        "polling_s": POLLING_INTERVAL_S,
        "cooldown_s": 2 * startup_s,
        "up_window_s": 0,
        "up_pods": max(1, planned_replicas),
        "up_period_s": min(1800, startup_s),
        "down_window_s": min(3600, 2 * startup_s),
        "down_pods": 1,
        "down_period_s": min(1800, startup_s),
    }


def max_replicas(ctx: Ctx, role: PlanRole) -> int:
    """The role's share of the node limit: nodes * replicas per node (or / nodes per replica)."""
    p = ctx.plan
    total_gpus = sum(r.replicas * r.engine.gpus_per_replica for r in p.roles) or 1
    share = role.replicas * role.engine.gpus_per_replica / total_gpus
    gpus = p.nodes.max_nodes * p.instance.gpus * ctx.mig_slices * share
    return max(role.replicas, math.floor(gpus / role.engine.gpus_per_replica))


def scale_target(ctx: Ctx, role: PlanRole) -> Obj:
    if role.engine.nodes_per_replica == 1:
        return {"apiVersion": "apps/v1", "kind": "Deployment", "name": ctx.workload_name(role)}
    if ctx.plan.mode == "disaggregated" and ctx.opts.pd_backend == "disaggregatedset":
        return {
            "apiVersion": "disaggregatedset.x-k8s.io/v1",
            "kind": "DisaggregatedSetRoleScaler",
            "name": f"{ctx.name}-{role.name}",
        }
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "name": ctx.workload_name(role),
    }


def _selector(ctx: Ctx, role: PlanRole) -> str:
    # Labels the engine PodMonitor copies from the pods (podTargetLabels; dots and slashes become "_").
    return f'namespace="{ctx.ns}",app_kubernetes_io_instance="{ctx.name}",eksinfer_io_role="{role.name}"'


def _queries(ctx: Ctx, role: PlanRole) -> dict[str, tuple[str, str]]:
    """Trigger name -> (PromQL query, metricType)."""
    sel = _selector(ctx, role)
    ttft = (
        f"histogram_quantile(0.9, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{{{sel}}}[2m])))"
    )
    return {
        "running": (f"sum(vllm:num_requests_running{{{sel}}})", "AverageValue"),
        "queue": (f"sum(vllm:num_requests_waiting{{{sel}}})", "AverageValue"),
        "kv-cache": (f"sum(vllm:kv_cache_usage_perc{{{sel}}})", "AverageValue"),
        "ttft": (ttft, "Value"),
    }


def forecast_query(ctx: Ctx, role: PlanRole, lead_s: float, window_min: int) -> str:
    """The SLO-predictive trigger (`eksinfer autoscale`, autoscale/policies.py): the larger of the last
    minute's request rate and its least-squares trend over `window_min` minutes, `lead_s` seconds ahead.
    PromQL's max() aggregates one vector, so the two series get distinct labels first."""
    rate = f"sum(rate(vllm:request_success_total{{{_selector(ctx, role)}}}[1m]))"
    ahead = f"predict_linear({rate}[{window_min}m:1m], {lead_s:g})"
    return (
        f'max(label_replace({rate}, "series", "now", "", "") or '
        f'label_replace(clamp_min({ahead}, 0), "series", "ahead", "", ""))'
    )


def _prom(server: str, name: str, query: str, threshold: float, metric_type: str, **extra: str) -> Obj:
    meta = {"serverAddress": server, "query": query, "threshold": f"{threshold:g}", **extra}
    return {"type": "prometheus", "name": name, "metricType": metric_type, "metadata": meta}


def triggers(ctx: Ctx, role: PlanRole) -> list[Obj]:
    server, queries = ctx.opts.prometheus_url, _queries(ctx, role)
    rec = ctx.opts.autoscale
    if rec is None:
        th = trigger_thresholds(ctx.plan, role)
        slo = ctx.plan.stack is None or ctx.plan.stack.autoscaling == "slo"  # migration phase 4 on
        out = []
        for name in ("running", "queue", "kv-cache", *(("ttft",) if slo else ())):
            query, kind = queries[name]
            extra = {"activationThreshold": "1"} if name == "queue" else {}
            out.append(_prom(server, name, query, th[name], kind, **extra))
        return out
    out = []
    for t in rec.triggers:
        if t.name == "forecast":
            out.append(
                _prom(
                    server,
                    t.name,
                    forecast_query(ctx, role, t.lead_s, t.window_min),
                    t.threshold,
                    "AverageValue",
                )
            )
            continue
        query, kind = queries[t.name]
        extra = {"activationThreshold": "1"} if t.name == "queue" else {}
        out.append(_prom(server, t.name, query, t.threshold, kind, **extra))
    if not out:  # a static recommendation: min = max pins the count; KEDA needs one trigger
        query, kind = queries["running"]
        out.append(_prom(server, "running", query, trigger_thresholds(ctx.plan, role)["running"], kind))
    return out


def min_replicas(role: PlanRole) -> int:
    """KEDA's floor: two replicas when the plan has two or more, so that losing one pod (a Spot
    interruption, a node drain the PodDisruptionBudget allows) never leaves the role with none; otherwise
    one. Not the planned count: off-peak the role shrinks to the floor, and the first apply starts there
    and scales up on the triggers below."""
    return min(2, max(1, role.replicas))


def scaledobject(ctx: Ctx, role: PlanRole) -> Obj:
    startup = ctx.node_startup_s()
    b = behavior_numbers(startup, role.replicas)
    low, high = min_replicas(role), max_replicas(ctx, role)
    rec = ctx.opts.autoscale
    if rec is not None:  # `render --autoscale FILE`: the numbers the simulation chose
        rb = rec.behavior
        b = {k: getattr(rb, k) for k in b}
        low, high = rb.min_replicas, rb.max_replicas
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": ctx.meta(ctx.workload_name(role), "engine", {"eksinfer.io/role": role.name}),
        "spec": {
            "scaleTargetRef": scale_target(ctx, role),
            "minReplicaCount": low,
            "maxReplicaCount": high,
            "pollingInterval": b["polling_s"],
            "cooldownPeriod": b["cooldown_s"],
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleUp": {
                            "stabilizationWindowSeconds": b["up_window_s"],
                            "policies": [
                                {"type": "Pods", "value": b["up_pods"], "periodSeconds": b["up_period_s"]}
                            ],
                        },
                        "scaleDown": {
                            "stabilizationWindowSeconds": b["down_window_s"],
                            "policies": [
                                {"type": "Pods", "value": b["down_pods"], "periodSeconds": b["down_period_s"]}
                            ],
                        },
                    }
                }
            },
            "triggers": triggers(ctx, role),
        },
    }


def autoscale_objects(ctx: Ctx) -> list[Obj]:
    return [scaledobject(ctx, role) for role in ctx.plan.roles]
