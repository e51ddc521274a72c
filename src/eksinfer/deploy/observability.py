"""Monitoring: PodMonitor (engines), ServiceMonitors (gateway, DCGM exporter), a PrometheusRule with
recording rules and alerts, and a Grafana dashboard.

Metric names: vLLM V1 (`vllm:*`, vllm/v1/metrics/loggers.py, docs.vllm.ai v0.32 "Metrics"),
dcgm-exporter (`DCGM_FI_*`, NVIDIA/dcgm-exporter 4.5.3 default counters CSV) and the gateway's own
(`eksinfer_gateway_*`, docs/gateway.md). The engine PodMonitor
copies the pod labels `app.kubernetes.io/instance`, `eksinfer.io/role`, `eksinfer.io/pool` onto every series
(as `app_kubernetes_io_instance`, ...) so rules, KEDA queries and panels select one deployment and role.
Alert thresholds are the reference targets: TTFT P99 over 2 s (conversational) / 5 s (batch) or the plan's own
TTFT for custom SLOs; GPU SM activity under 70% for 30 min; prefix-cache hit rate under 60% when the traffic
shares prompts; a queue that keeps growing past the autoscaler's per-replica target; an engine whose
/metrics does not answer (`up == 0`: stalled or crash-looping, while its pod still exists) for 2 minutes.
The cascade (gateway/resilience/cascade.py): the gateway labels requests, TTFT, fallbacks and sheds with the
`pool` (tier) that answered or was passed over, and `eksinfer_gateway_cascade_tier_info` says each pool's kind
and position in a model's cascade; the dashboard's cascade row shows requests and TTFT per pool and why
requests moved on, and, for a plan with a Bedrock tier, the share Bedrock answered, with an alert when that
share stays above a quarter of the traffic for 15 minutes (the fallback tier is for failures and bursts; a
sustained quarter means the self-hosted pools are short, and Bedrock bills per token).
The gateway's series are selected by `job` (the operator names a ServiceMonitor's job after the Service);
its ServiceMonitor honours the gateway's own labels, since its `endpoint` label (the engine) would otherwise
be renamed `exported_endpoint` by the operator's `endpoint` (port name) target label.
"""

from __future__ import annotations

import json
from typing import Any

from eksinfer.deploy import bedrock
from eksinfer.deploy.autoscale import per_replica_concurrency
from eksinfer.deploy.context import Ctx, Obj

TTFT_TARGET_S = {"conversational": 2.0, "batch": 5.0}
GPU_UTIL_MIN = 0.70
KV_HIT_MIN = 0.60
BY = "namespace, app_kubernetes_io_instance, eksinfer_io_role"
POD_TARGET_LABELS = ["app.kubernetes.io/instance", "eksinfer.io/role", "eksinfer.io/pool"]
ENGINE_DOWN_FOR = "2m"
GW = "eksinfer_gateway_"
MANAGED_SHARE_MAX = 0.25  # share of a model's requests answered by a managed tier (Bedrock), sustained 15 min
MANAGED_SHARE_FOR = "15m"


def _release(ctx: Ctx) -> dict[str, str]:
    return {"release": ctx.opts.prometheus_release}


def engine_podmonitor(ctx: Ctx) -> Obj:
    meta = ctx.meta(f"{ctx.name}-engines", "engine", _release(ctx))
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": meta,
        "spec": {
            "selector": {
                "matchLabels": {
                    "app.kubernetes.io/instance": ctx.name,
                    "app.kubernetes.io/component": "engine",
                    "eksinfer.io/serving": "true",
                }
            },
            "podTargetLabels": POD_TARGET_LABELS,
            "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
        },
    }


def gateway_servicemonitor(ctx: Ctx) -> Obj:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": ctx.meta(f"{ctx.name}-gateway", "gateway", _release(ctx)),
        "spec": {
            "selector": {
                "matchLabels": {
                    "app.kubernetes.io/instance": ctx.name,
                    "app.kubernetes.io/component": "gateway",
                }
            },
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s", "honorLabels": True}],
        },
    }


def dcgm_servicemonitor(ctx: Ctx) -> Obj:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": ctx.meta(f"{ctx.name}-dcgm", "monitoring", _release(ctx)),
        "spec": {
            "namespaceSelector": {"matchNames": ["gpu-operator"]},
            "selector": {"matchLabels": {"app": "nvidia-dcgm-exporter"}},
            # honorLabels keeps the pod/namespace labels of the GPU's consumer, not the exporter's own.
            "endpoints": [
                {"port": "gpu-metrics", "path": "/metrics", "interval": "15s", "honorLabels": True}
            ],
        },
    }


def ttft_target_s(ctx: Ctx) -> float:
    return TTFT_TARGET_S.get(ctx.plan.slo.preset, ctx.plan.slo.ttft_s)


def queue_alert_threshold(ctx: Ctx) -> int:
    role = ctx.plan.roles[-1]
    return max(1, round(0.1 * per_replica_concurrency(ctx, role))) * max(1, role.replicas)


def gateway_job(ctx: Ctx) -> str:
    """The `job` label of the gateway's series: the operator names it after the Service."""
    return f"{ctx.name}-gateway"


def gateway_recording_rules(ctx: Ctx) -> list[Obj]:
    """Traffic as clients see it at the gateway: request rate, errors, TTFT, routing time, predicted hits."""
    sel = f'{{namespace="{ctx.ns}",job="{gateway_job(ctx)}"}}'
    by = "namespace, model"
    mine = {"app_kubernetes_io_instance": ctx.name}

    def rate(metric: str, extra: str = "", group: str = by) -> str:
        s = sel if not extra else sel[:-1] + "," + extra + "}"
        return f"sum by ({group}) (rate({GW}{metric}{s}[5m]))"

    def p99(metric: str, group: str = by) -> str:
        return f"histogram_quantile(0.99, sum by (le, {group}) (rate({GW}{metric}_bucket{sel}[5m])))"

    errors = 'status=~"5.."'
    pooled = f"{by}, pool"
    total = rate("requests_total", "", "namespace")
    rules: list[Obj] = [
        {"record": "eksinfer:gateway_requests:rate5m", "expr": rate("requests_total")},
        {
            "record": "eksinfer:gateway_errors:ratio5m",
            # `or ... * 0`: 0 rather than no value while no 5xx series exists yet
            "expr": f"({rate('requests_total', errors, 'namespace')} or {total} * 0) / ({total} > 0)",
        },
        {"record": "eksinfer:gateway_ttft_seconds:p99", "expr": p99("time_to_first_token_seconds")},
        {"record": "eksinfer:gateway_scheduling_seconds:p99", "expr": p99("scheduling_duration_seconds")},
        {
            "record": "eksinfer:gateway_predicted_hit_ratio",
            "expr": f"{rate('prompt_tokens_predicted_cached_total')} / ({rate('prompt_tokens_total')} > 0)",
        },
        {"record": "eksinfer:gateway_generation_tokens:rate5m", "expr": rate("generation_tokens_total")},
        # The cascade: per pool (tier) that answered, and why requests passed a tier over (sheds included).
        {"record": "eksinfer:gateway_pool_requests:rate5m", "expr": rate("requests_total", "", pooled)},
        {
            "record": "eksinfer:gateway_pool_ttft_seconds:p99",
            "expr": p99("time_to_first_token_seconds", pooled),
        },
        {
            "record": "eksinfer:gateway_fallbacks:rate5m",
            "expr": rate("fallbacks_total", "", f"{pooled}, reason"),
        },
    ]
    if bedrock.enabled(ctx):
        # Requests answered by a pool whose kind is not vllm (the info series is one per gateway pod: max).
        managed = (
            f"sum by ({by}) ({rate('requests_total', '', pooled)} * on ({pooled}) group_left () "
            f'max by ({pooled}) ({GW}cascade_tier_info{sel[:-1]},kind!="vllm"}}))'
        )
        answered = rate("requests_total")
        rules.append(
            {
                "record": "eksinfer:gateway_managed_share:ratio5m",
                # `or ... * 0`: 0 rather than no value while no managed tier has answered
                "expr": f"({managed} or {answered} * 0) / ({answered} > 0)",
            }
        )
    return [{**r, "labels": mine} for r in rules]


def recording_rules(ctx: Ctx) -> list[Obj]:
    sel = f'{{namespace="{ctx.ns}",app_kubernetes_io_instance="{ctx.name}"}}'

    def quantile(metric: str) -> str:
        return f"histogram_quantile(0.99, sum by (le, {BY}) (rate({metric}_bucket{sel}[5m])))"

    def rate(metric: str) -> str:
        return f"sum by ({BY}) (rate({metric}{sel}[5m]))"

    gpu = f'avg by (namespace) (DCGM_FI_PROF_SM_ACTIVE{{namespace="{ctx.ns}",pod=~"{ctx.name}-.*"}})'
    return [
        {"record": "eksinfer:ttft_seconds:p99", "expr": quantile("vllm:time_to_first_token_seconds")},
        {"record": "eksinfer:tpot_seconds:p99", "expr": quantile("vllm:inter_token_latency_seconds")},
        {
            "record": "eksinfer:tpot_seconds:mean",
            "expr": f"{rate('vllm:inter_token_latency_seconds_sum')} / "
            f"({rate('vllm:inter_token_latency_seconds_count')} > 0)",
        },
        {
            "record": "eksinfer:kv_cache_hit_ratio",
            "expr": f"{rate('vllm:prefix_cache_hits_total')} / "
            f"({rate('vllm:prefix_cache_queries_total')} > 0)",
        },
        {"record": "eksinfer:queue_depth", "expr": f"sum by ({BY}) (vllm:num_requests_waiting{sel})"},
        {"record": "eksinfer:generation_tokens:rate5m", "expr": rate("vllm:generation_tokens_total")},
        {
            "record": "eksinfer:gpu_utilization:avg",
            "expr": gpu,
            "labels": {"app_kubernetes_io_instance": ctx.name},
        },
    ]


def alert_rules(ctx: Ctx) -> list[Obj]:
    me = f'app_kubernetes_io_instance="{ctx.name}"'
    ttft = ttft_target_s(ctx)
    rules: list[Obj] = [
        {
            "alert": "EksinferEngineDown",
            "expr": f'up{{namespace="{ctx.ns}",{me},eksinfer_io_role!=""}} == 0',
            "for": ENGINE_DOWN_FOR,
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "Engine {{ $labels.pod }} ({{ $labels.eksinfer_io_role }}) does not answer "
                "/metrics",
                "description": "A stalled or restarting engine: the gateway stops routing to it; check the "
                "pod's logs and GPU.",
            },
        },
        {
            "alert": "EksinferTTFTAboveTarget",
            "expr": f"eksinfer:ttft_seconds:p99{{{me}}} > {ttft:g}",
            "for": "5m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": f"TTFT P99 of {{{{ $labels.eksinfer_io_role }}}} is "
                f"{{{{ $value | humanizeDuration }}}}, target {ttft:g}s",
                "description": "Add replicas or check prefill load; the queue and KV usage panels say which.",
            },
        },
        {
            "alert": "EksinferGPUUnderutilized",
            "expr": f"eksinfer:gpu_utilization:avg{{{me}}} < {GPU_UTIL_MIN:g}",
            "for": "30m",
            "labels": {"severity": "info"},
            "annotations": {
                "summary": "GPU SM activity {{ $value | humanizePercentage }} is under 70% for 30 minutes",
                "description": "Fewer replicas or a smaller instance would serve this load for less.",
            },
        },
        {
            "alert": "EksinferQueueGrowing",
            "expr": f"eksinfer:queue_depth{{{me}}} > {queue_alert_threshold(ctx)} and "
            f"deriv(eksinfer:queue_depth{{{me}}}[10m]) > 0",
            "for": "10m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "{{ $value }} requests waiting and the queue keeps growing",
                "description": "Autoscaling is not keeping up: check NodePool limits and pending pods.",
            },
        },
    ]
    if bedrock.enabled(ctx):
        rules.append(
            {
                "alert": "EksinferBedrockFallbackSustained",
                "expr": f"eksinfer:gateway_managed_share:ratio5m{{{me}}} > {MANAGED_SHARE_MAX:g}",
                "for": MANAGED_SHARE_FOR,
                "labels": {"severity": "warning"},
                "annotations": {
                    "summary": "{{ $value | humanizePercentage }} of {{ $labels.model }} requests "
                    "answered by Amazon Bedrock for 15 minutes",
                    "description": "The self-hosted pools pass this traffic on (the cascade panels say why: "
                    "sheds, context too long, failures) and Bedrock bills per token: add replicas or raise "
                    "the NodePool limit.",
                },
            }
        )
    if ctx.plan.traffic.shared_prefix_ratio > 0:
        rules.insert(
            2,
            {
                "alert": "EksinferKVCacheHitRateLow",
                "expr": f"eksinfer:kv_cache_hit_ratio{{{me}}} < {KV_HIT_MIN:g}",
                "for": "15m",
                "labels": {"severity": "warning"},
                "annotations": {
                    "summary": "Prefix-cache hit rate {{ $value | humanizePercentage }} is under 60%",
                    "description": "Prompts share prefixes but requests miss: check KV-aware "
                    "routing and KV events.",
                },
            },
        )
    return rules


def prometheus_rule(ctx: Ctx) -> Obj:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": ctx.meta(ctx.name, "monitoring", _release(ctx)),
        "spec": {
            # One group: rules in a group run in order, so each alert reads the recording rules of the same
            # evaluation (separate groups run independently and alerts would lag, or race, by one interval).
            "groups": [
                {
                    "name": f"eksinfer-{ctx.name}",
                    "interval": "30s",
                    "rules": [*recording_rules(ctx), *gateway_recording_rules(ctx), *alert_rules(ctx)],
                }
            ]
        },
    }


Panel = tuple[str, list[tuple[str, str]], str, float | None]


def _panel(
    i: int, title: str, exprs: list[tuple[str, str]], unit: str, threshold: float | None = None, top: int = 0
) -> Obj:
    defaults: dict[str, Any] = {"unit": unit}
    if threshold is not None:
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}, {"color": "red", "value": threshold}],
        }
        defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    return {
        "id": i + 1,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": top + (i // 2) * 8},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [
            {"refId": chr(65 + j), "expr": e, "legendFormat": legend} for j, (e, legend) in enumerate(exprs)
        ],
    }


def dashboard(ctx: Ctx) -> Obj:
    me = f'app_kubernetes_io_instance="{ctx.name}"'
    sel = f'{{namespace="{ctx.ns}",{me}}}'
    role = "{{eksinfer_io_role}}"
    panels = [
        ("TTFT P99", [(f"eksinfer:ttft_seconds:p99{{{me}}}", role)], "s", ttft_target_s(ctx)),
        (
            "TPOT (inter-token latency)",
            [
                (f"eksinfer:tpot_seconds:p99{{{me}}}", f"P99 {role}"),
                (f"eksinfer:tpot_seconds:mean{{{me}}}", f"mean {role}"),
            ],
            "s",
            ctx.plan.slo.tpot_s,
        ),
        ("KV-cache hit rate", [(f"eksinfer:kv_cache_hit_ratio{{{me}}}", role)], "percentunit", KV_HIT_MIN),
        (
            "GPU utilisation (SM active)",
            [(f"eksinfer:gpu_utilization:avg{{{me}}}", "avg")],
            "percentunit",
            GPU_UTIL_MIN,
        ),
        ("Queue depth", [(f"eksinfer:queue_depth{{{me}}}", role)], "short", None),
        ("KV-cache usage per pod", [(f"vllm:kv_cache_usage_perc{sel}", "{{pod}}")], "percentunit", 0.9),
        ("Generation throughput", [(f"eksinfer:generation_tokens:rate5m{{{me}}}", role)], "short", None),
        ("Running requests per pod", [(f"vllm:num_requests_running{sel}", "{{pod}}")], "short", None),
        (
            "Engines up",
            [(f'up{{namespace="{ctx.ns}",{me},eksinfer_io_role!=""}}', "{{pod}}")],
            "short",
            None,
        ),
        (
            "Gateway requests and errors",
            [
                (f"eksinfer:gateway_requests:rate5m{{{me}}}", "req/s {{model}}"),
                (f"eksinfer:gateway_errors:ratio5m{{{me}}}", "5xx share"),
            ],
            "short",
            None,
        ),
        (
            "TTFT P99: gateway vs engines",
            [
                (f"eksinfer:gateway_ttft_seconds:p99{{{me}}}", "gateway {{model}}"),
                (f"eksinfer:ttft_seconds:p99{{{me}}}", f"engine {role}"),
            ],
            "s",
            ttft_target_s(ctx),
        ),
        (
            "Prefix-cache hit rate: predicted vs engines",
            [
                (f"eksinfer:gateway_predicted_hit_ratio{{{me}}}", "predicted {{model}}"),
                (f"eksinfer:kv_cache_hit_ratio{{{me}}}", f"engine {role}"),
            ],
            "percentunit",
            None,
        ),
        (
            "Gateway routing time P99",
            [(f"eksinfer:gateway_scheduling_seconds:p99{{{me}}}", "{{model}}")],
            "s",
            None,
        ),
    ]
    cascade = cascade_panels(ctx)
    row_y = ((len(panels) + 1) // 2) * 8
    row = {
        "id": len(panels) + 1,
        "type": "row",
        "title": "Cascade: pools (tiers) and fallbacks",
        "collapsed": False,
        "gridPos": {"h": 1, "w": 24, "x": 0, "y": row_y},
        "panels": [],
    }
    first = len(panels) + 2
    return {
        "title": f"eksinfer / {ctx.name}",
        "uid": f"eksinfer-{ctx.name}"[:40],
        "schemaVersion": 39,
        "tags": ["eksinfer", "vllm"],
        "time": {"from": "now-3h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}
            ]
        },
        "panels": [
            *(_panel(i, *p) for i, p in enumerate(panels)),
            row,
            *({**_panel(i, *p, top=row_y + 1), "id": first + i} for i, p in enumerate(cascade)),
        ],
    }


def cascade_panels(ctx: Ctx) -> list[Panel]:
    """Requests and TTFT per pool (tier), why requests moved on, and the share a Bedrock tier answered."""
    me = f'app_kubernetes_io_instance="{ctx.name}"'
    per_pool = "{{model}} {{pool}}"
    panels: list[Panel] = [
        ("Requests per pool", [(f"eksinfer:gateway_pool_requests:rate5m{{{me}}}", per_pool)], "reqps", None),
        (
            "TTFT P99 per pool (gateway)",
            [(f"eksinfer:gateway_pool_ttft_seconds:p99{{{me}}}", per_pool)],
            "s",
            ttft_target_s(ctx),
        ),
        (
            "Fallbacks and sheds: tiers passed over, by reason",
            [(f"eksinfer:gateway_fallbacks:rate5m{{{me}}}", "{{model}} {{pool}}: {{reason}}")],
            "reqps",
            None,
        ),
    ]
    if bedrock.enabled(ctx):
        panels.append(
            (
                "Share answered by Amazon Bedrock",
                [(f"eksinfer:gateway_managed_share:ratio5m{{{me}}}", "{{model}}")],
                "percentunit",
                MANAGED_SHARE_MAX,
            )
        )
    return panels


def dashboard_json(ctx: Ctx) -> str:
    return json.dumps(dashboard(ctx), indent=2) + "\n"


def monitoring_objects(ctx: Ctx) -> list[Obj]:
    return [
        engine_podmonitor(ctx),
        gateway_servicemonitor(ctx),
        dcgm_servicemonitor(ctx),
        prometheus_rule(ctx),
    ]
