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
from eksinfer.planner.schema import PlanRole


def per_replica_concurrency(ctx: Ctx, role: PlanRole) -> int:
    return max(1, min(role.engine.max_num_seqs, ctx.plan.prediction.max_concurrency_per_replica))


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


def triggers(ctx: Ctx, role: PlanRole) -> list[Obj]:
    sel, conc = _selector(ctx, role), per_replica_concurrency(ctx, role)
    server = ctx.opts.prometheus_url

    def prom(name: str, query: str, threshold: str, metric_type: str = "AverageValue", **extra: str) -> Obj:
        meta = {"serverAddress": server, "query": query, "threshold": threshold, **extra}
        return {"type": "prometheus", "name": name, "metricType": metric_type, "metadata": meta}

    ttft = (
        f"histogram_quantile(0.9, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{{{sel}}}[2m])))"
    )
    slo = ctx.plan.stack is None or ctx.plan.stack.autoscaling == "slo"  # migration phase 4 on
    return [
        prom("running", f"sum(vllm:num_requests_running{{{sel}}})", str(max(1, math.floor(0.8 * conc)))),
        prom(
            "queue",
            f"sum(vllm:num_requests_waiting{{{sel}}})",
            str(max(1, math.ceil(0.1 * conc))),
            activationThreshold="1",
        ),
        prom("kv-cache", f"sum(vllm:kv_cache_usage_perc{{{sel}}})", "0.8"),
        *([prom("ttft", ttft, f"{ctx.plan.slo.ttft_s:g}", "Value")] if slo else []),
    ]


def min_replicas(role: PlanRole) -> int:
    """KEDA's floor: two replicas when the plan has two or more, so that losing one pod (a Spot
    interruption, a node drain the PodDisruptionBudget allows) never leaves the role with none; otherwise
    one. Not the planned count: off-peak the role shrinks to the floor, and the first apply starts there
    and scales up on the triggers below."""
    return min(2, max(1, role.replicas))


def scaledobject(ctx: Ctx, role: PlanRole) -> Obj:
    startup = ctx.node_startup_s()
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": ctx.meta(ctx.workload_name(role), "engine", {"eksinfer.io/role": role.name}),
        "spec": {
            "scaleTargetRef": scale_target(ctx, role),
            "minReplicaCount": min_replicas(role),
            "maxReplicaCount": max_replicas(ctx, role),
            "pollingInterval": 15,
            "cooldownPeriod": 2 * startup,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleUp": {
                            "stabilizationWindowSeconds": 0,
                            "policies": [
                                {
                                    "type": "Pods",
                                    "value": max(1, role.replicas),
                                    "periodSeconds": min(1800, startup),
                                }
                            ],
                        },
                        "scaleDown": {
                            "stabilizationWindowSeconds": min(3600, 2 * startup),
                            "policies": [{"type": "Pods", "value": 1, "periodSeconds": min(1800, startup)}],
                        },
                    }
                }
            },
            "triggers": triggers(ctx, role),
        },
    }


def autoscale_objects(ctx: Ctx) -> list[Obj]:
    return [scaledobject(ctx, role) for role in ctx.plan.roles]
