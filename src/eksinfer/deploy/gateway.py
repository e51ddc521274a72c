"""The eksinfer gateway in the cluster: ConfigMap (its YAML config), ServiceAccount + Role + RoleBinding to
list/watch engine pods, Deployment, Service, PodDisruptionBudget, and the exposure chosen (`exposure.py`).

The routing config discovers engines by namespace + label selector
(`eksinfer.gateway.config.KubernetesDiscovery`) and subscribes to each pod's KV-event port when the plan
routes KV-aware. Disaggregated plans discover both roles, each as its own pool (`decode`, `prefill`: the
prefill pods serve), and give the model a `disaggregation:` profile naming them, so the gateway runs the NIXL
steps (prefill hop, then decode with the returned kv_transfer_params). A gateway without that section (before
eksinfer.gateway.pd) gets the two pools alone and routes over both.
"""

from __future__ import annotations

from typing import Any

import yaml

from eksinfer.deploy import bedrock
from eksinfer.deploy.context import ENGINE_PORT, GATEWAY_PORT, HASH_SEED, KV_EVENTS_PORT, Ctx, Obj
from eksinfer.deploy.exposure import exposure_objects
from eksinfer.deploy.lint.rules_pd import gateway_speaks_pd


def routed_role(ctx: Ctx) -> str:
    names = [r.name for r in ctx.plan.roles]
    return "decode" if "decode" in names else names[0]


def engine_selector(ctx: Ctx, pool: str | None = None, role: str | None = None) -> str:
    """Serving pods of the routed role (or `role`); with `pool`, only that pool's (cloud or on-prem)."""
    base = (
        f"app.kubernetes.io/instance={ctx.name},eksinfer.io/role={role or routed_role(ctx)},"
        "eksinfer.io/serving=true"
    )
    return base if pool is None else f"{base},eksinfer.io/pool={pool}"


def _discovery(ctx: Ctx, pool: str | None, role: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "namespace": ctx.ns,
        "label_selector": engine_selector(ctx, pool, role),
        "port": ENGINE_PORT,
    }
    if ctx.kv_aware:
        found["kv_events_port"] = KV_EVENTS_PORT
    if role is not None:  # P/D: the gateway's pool is the role
        found["pool"] = role
    elif pool is not None:
        found["pool"] = pool
    return found


def disaggregated(ctx: Ctx) -> bool:
    names = {r.name for r in ctx.plan.roles}
    return ctx.plan.mode == "disaggregated" and {"prefill", "decode"} <= names


def gateway_config(ctx: Ctx) -> dict[str, Any]:
    engine = ctx.plan.roles[0].engine
    hybrid = ctx.plan.on_prem is not None and ctx.plan.on_prem.replicas > 0
    # With hybrid nodes, one discovery per pool, so the gateway's metrics (and, later, the cascade
    # fallback) tell the cloud engines from the on-prem ones.
    discovery: Any = (
        [_discovery(ctx, "cloud"), _discovery(ctx, "onprem")] if hybrid else _discovery(ctx, None)
    )
    pd = disaggregated(ctx)
    if pd:  # the cloud prefill and decode pools (P/D plans have no on-prem pool)
        discovery = [_discovery(ctx, "cloud", "decode"), _discovery(ctx, "cloud", "prefill")]
    server = {
        "host": "0.0.0.0",
        "port": GATEWAY_PORT,
        # Headers naming engine pods: off for clients outside the cluster (render --route-headers turns on).
        "route_headers": ctx.opts.route_headers,
        # Streams in flight may finish after SIGTERM; the pod's grace period is longer (deployment()).
        "drain_timeout_s": ctx.longest_request_s(),
    }
    config: dict[str, Any] = {
        "server": server,
        "endpoints": {"kubernetes": discovery},
        "scrape": {"interval_s": 0.2, "stale_after_s": 2.0},
        "routing": {
            "preset": ctx.plan.routing.gateway_preset,
            "block_size": engine.block_size,
            "tokenizer": {"mode": "engine"},
        },
        # The plan's fallback: on-prem first, then the cloud engines, then Amazon Bedrock (deploy/bedrock.py).
        # A P/D model's self-hosted tier is its decode pool: the P/D hop picks the prefill pool itself.
        **bedrock.gateway_sections(ctx, _self_hosted_pools(pd, hybrid)),
    }
    if pd and gateway_speaks_pd():
        config["disaggregation"] = {ctx.served_name(): {"prefill_pool": "prefill", "decode_pool": "decode"}}
    return config


def _self_hosted_pools(pd: bool, hybrid: bool) -> list[str]:
    """The discovered pools a request tries before Bedrock, in cascade order."""
    if pd:
        return ["decode"]
    return ["onprem", "cloud"] if hybrid else ["default"]


def configmap(ctx: Ctx) -> Obj:
    text = yaml.safe_dump(gateway_config(ctx), sort_keys=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": ctx.meta(f"{ctx.name}-gateway", "gateway"),
        "data": {"gateway.yaml": text},
    }


def _service_account_meta(ctx: Ctx, name: str) -> Obj:
    meta = ctx.meta(name, "gateway")
    annotations = bedrock.service_account_annotations(ctx)
    if annotations:
        meta["annotations"] = annotations
    return meta


def rbac(ctx: Ctx) -> list[Obj]:
    name = f"{ctx.name}-gateway"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _service_account_meta(ctx, name)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": ctx.meta(name, "gateway"),
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": ctx.meta(name, "gateway"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ctx.ns}],
        },
    ]


GATEWAY_PRE_STOP_S = 10  # for the Service endpoints / load balancer to stop sending new connections


def selector(ctx: Ctx) -> dict[str, str]:
    return {"app.kubernetes.io/instance": ctx.name, "app.kubernetes.io/component": "gateway"}


def deployment(ctx: Ctx) -> Obj:
    """At least two replicas on different nodes and, when possible, zones; on shutdown the pod leaves the
    Service first (preStop), then drains its streams (server.drain_timeout_s) inside the grace period."""
    name = f"{ctx.name}-gateway"
    labels = ctx.labels("gateway")
    env: list[Obj] = []
    if ctx.kv_aware:
        env.append({"name": "PYTHONHASHSEED", "value": HASH_SEED})  # same seed as the engines' block hashes
    probe = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5, "timeoutSeconds": 2}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": ctx.meta(name, "gateway"),
        "spec": {
            "replicas": max(2, ctx.opts.gateway_replicas),
            "selector": {"matchLabels": selector(ctx)},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": name,
                    "terminationGracePeriodSeconds": GATEWAY_PRE_STOP_S + ctx.longest_request_s() + 10,
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "podAffinityTerm": {
                                        "topologyKey": "kubernetes.io/hostname",
                                        "labelSelector": {"matchLabels": selector(ctx)},
                                    },
                                }
                            ]
                        }
                    },
                    "topologySpreadConstraints": ctx.zone_spread(selector(ctx)),
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "gateway",
                            "image": ctx.opts.gateway_image,
                            "command": ["eksinfer", "gateway", "--config", "/etc/eksinfer/gateway.yaml"],
                            "env": env,
                            "ports": [{"name": "http", "containerPort": GATEWAY_PORT}],
                            "readinessProbe": {**probe, "httpGet": {"path": "/ready", "port": "http"}},
                            "livenessProbe": {**probe, "failureThreshold": 6},
                            "lifecycle": {"preStop": {"sleep": {"seconds": GATEWAY_PRE_STOP_S}}},
                            "resources": {
                                "requests": {"cpu": "1", "memory": "1Gi"},
                                "limits": {"memory": "2Gi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "config", "mountPath": "/etc/eksinfer", "readOnly": True},
                                # the only writable path (HOME in the image) on a read-only root
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "config", "configMap": {"name": name}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }


def service(ctx: Ctx) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ctx.meta(f"{ctx.name}-gateway", "gateway"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(ctx),
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def gateway_objects(ctx: Ctx) -> list[Obj]:
    pdb = ctx.pdb(f"{ctx.name}-gateway", "gateway", selector(ctx), {})
    objs = [configmap(ctx), *rbac(ctx), deployment(ctx), service(ctx), pdb]
    return objs + exposure_objects(ctx)
