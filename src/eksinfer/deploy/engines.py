"""vLLM engines: a Deployment per role for tiers 1-2, a LeaderWorkerSet (or a DisaggregatedSet of them for
prefill/decode) for multi-node tier 3, plus the Services, the model cache and, with DRA, the claim template.

Pod shape (Gateway API Inference Extension v1.3.0 `config/manifests/vllm/gpu-deployment.yaml` and the
LeaderWorkerSet v0.10.0 vLLM example): `/dev/shm` as a memory emptyDir, a start-up probe sized to the
predicted load time, `preStop` sleep so the gateway drains the pod, GPU toleration,
`karpenter.sh/do-not-disrupt` so consolidation never takes a busy node. Weights come from a shared
ReadWriteMany cache (HF_HOME on the volume) or stream from S3 with the Run:ai loader; never baked into the
image. Multi-node groups use Ray via vLLM's `multi-node-serving.sh`: TP inside a node, PP across nodes (`size`
= PP), EFA devices and libfabric env on every pod, `RecreateGroupOnPodRestart`.

Prefill/decode plans: prefill pods run vLLM's NixlConnector as `kv_producer`, decode pods as `kv_consumer`
(vLLM 0.32 deprecates `kv_both` for NIXL), both advertise their NIXL side channel on the pod IP, and both
request EFA interfaces whenever the instance has them, single-node pods included: nothing keeps a prefill and
its decode pod on one node, and without EFA NIXL moves the KV over TCP on the pod network. A single-node pod
takes its GPUs' share of the node's interfaces (p5: 4 per GPU), so pods still pack onto a node.
"""

from __future__ import annotations

import json
import math
import shlex

from eksinfer.deploy import vllm_flags
from eksinfer.deploy.context import (
    ENGINE_PORT,
    GPU_TAINT,
    HASH_SEED,
    KV_EVENTS_PORT,
    NIXL_SIDE_CHANNEL_PORT,
    Ctx,
    Obj,
)
from eksinfer.deploy.tool_parsers import parsers_for
from eksinfer.planner.schema import PlanRole

RAY_SCRIPT = "/vllm-workspace/examples/online_serving/multi-node-serving.sh"
MODEL_MOUNT = "/models"
GROUP_SIZE_ANNOTATION = "leaderworkerset.sigs.k8s.io/exclusive-topology"
PRE_STOP_S = 30  # the gateway's watch drops a terminating pod within seconds; 30 s as GAIE's reference pod


def termination_grace_s(ctx: Ctx) -> int:
    """preStop, then the longest request the plan expects still streaming, then 10 s to exit."""
    return PRE_STOP_S + ctx.longest_request_s() + 10


def model_ref(ctx: Ctx) -> str:
    return ctx.opts.model_s3_uri or ctx.plan.model.hf_id


def vllm_args(ctx: Ctx, role: PlanRole) -> list[str]:
    """The plan's arguments, completed with what this deployment needs and the plan's structured fields."""
    e = role.engine
    args = list(e.vllm_args)
    add = vllm_flags.ensure
    add(args, "tensor-parallel-size", str(e.tensor_parallel_size))
    if e.pipeline_parallel_size > 1:
        add(args, "pipeline-parallel-size", str(e.pipeline_parallel_size))
    if e.data_parallel_size > 1:
        add(args, "data-parallel-size", str(e.data_parallel_size))
    if e.expert_parallel:
        add(args, "enable-expert-parallel")
    add(args, "max-model-len", str(e.max_model_len))
    add(args, "gpu-memory-utilization", str(e.gpu_memory_utilization))
    add(args, "block-size", str(e.block_size))
    if e.kv_cache_dtype != "auto":
        add(args, "kv-cache-dtype", e.kv_cache_dtype)
    if not vllm_flags.has(args, "no-enable-prefix-caching"):
        add(args, "enable-prefix-caching" if e.enable_prefix_caching else "no-enable-prefix-caching")
    add(args, "max-num-seqs", str(e.max_num_seqs))
    add(args, "max-num-batched-tokens", str(e.max_num_batched_tokens))
    add(args, "served-model-name", ctx.served_name())
    add(args, "port", str(ENGINE_PORT))
    parsers = parsers_for(ctx.plan.model.hf_id)
    if parsers is not None:  # agents send `tools`: vLLM refuses "auto" without these (deploy/tool_parsers.py)
        add(args, "enable-auto-tool-choice")
        add(args, "tool-call-parser", parsers.tool)
        if parsers.reasoning is not None:
            add(args, "reasoning-parser", parsers.reasoning)
    if ctx.kv_aware:
        events = {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": f"tcp://*:{KV_EVENTS_PORT}",
            "topic": f"kv@$(POD_IP)@{ctx.served_name()}",
        }
        add(args, "kv-events-config", json.dumps(events, separators=(",", ":")))
        # Reproducible block hashes: the default sha256 pickles, and vLLM seeds its root hash from
        # PYTHONHASHSEED (vllm/v1/core/kv_cache_utils.py `init_none_hash`).
        add(args, "prefix-caching-hash-algo", "sha256_cbor")
    if ctx.opts.model_s3_uri:
        add(args, "load-format", "runai_streamer")
        extra = {"concurrency": 16, "distributed": e.tensor_parallel_size > 1}
        add(args, "model-loader-extra-config", json.dumps(extra, separators=(",", ":")))
    if ctx.plan.mode == "disaggregated":
        _set_kv_transfer_config(args, role)
    if e.nodes_per_replica > 1:
        add(args, "distributed-executor-backend", "ray")
    return args


def kv_transfer_config(role: PlanRole) -> str:
    """vLLM's --kv-transfer-config for a P/D role: prefill produces KV, decode consumes it."""
    kv_role = {"prefill": "kv_producer", "decode": "kv_consumer"}.get(role.name, "kv_both")
    return json.dumps({"kv_connector": "NixlConnector", "kv_role": kv_role}, separators=(",", ":"))


def _set_kv_transfer_config(args: list[str], role: PlanRole) -> None:
    """The role's NIXL config; a plan's generic kv_both NixlConnector becomes the role's (a user's own
    connector stays)."""
    current = vllm_flags.value(args, "kv-transfer-config")
    if current is None:
        vllm_flags.ensure(args, "kv-transfer-config", kv_transfer_config(role))
        return
    try:
        parsed = json.loads(current)
    except ValueError:
        return
    if parsed == {"kv_connector": "NixlConnector", "kv_role": "kv_both"}:
        for i, token in enumerate(args):
            if token == "--kv-transfer-config" and i + 1 < len(args):
                args[i + 1] = kv_transfer_config(role)
            elif token.startswith("--kv-transfer-config="):
                args[i] = f"--kv-transfer-config={kv_transfer_config(role)}"


def efa_interfaces(ctx: Ctx, gpus: int, *, multi: bool) -> int:
    """EFA interfaces a pod requests: all of the node's for a multi-node group, its GPUs' share for a
    single-node P/D pod (NIXL between nodes), none otherwise or where the instance has no EFA."""
    total = ctx.efa_interfaces
    if not total:
        return 0
    if multi:
        return total
    if ctx.plan.mode != "disaggregated":
        return 0
    per_node = max(ctx.plan.instance.gpus, 1)
    return max(1, total * min(gpus, per_node) // per_node)


def _env(ctx: Ctx, role: PlanRole, multi_node: bool) -> list[Obj]:
    env: list[Obj] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {
            "name": "HF_TOKEN",
            "valueFrom": {
                "secretKeyRef": {"name": ctx.opts.hf_token_secret, "key": "token", "optional": True}
            },
        },
    ]
    if not ctx.opts.model_s3_uri:
        env.append({"name": "HF_HOME", "value": f"{MODEL_MOUNT}/hf"})
    else:
        env.append({"name": "AWS_REGION", "value": ctx.plan.instance.region})
    if ctx.kv_aware:
        env.append({"name": "PYTHONHASHSEED", "value": HASH_SEED})
    if ctx.plan.mode == "disaggregated":
        env += [
            {"name": "VLLM_NIXL_SIDE_CHANNEL_HOST", "value": "$(POD_IP)"},
            {"name": "VLLM_NIXL_SIDE_CHANNEL_PORT", "value": str(NIXL_SIDE_CHANNEL_PORT)},
        ]
    if multi_node and ctx.efa_interfaces:
        env += [{"name": "FI_PROVIDER", "value": "efa"}, {"name": "FI_EFA_USE_DEVICE_RDMA", "value": "1"}]
    env += [{"name": name, "value": value} for name, value in sorted(role.engine.env.items())]
    return env


def _probes(ctx: Ctx) -> Obj:
    period = 10
    health = {"httpGet": {"path": "/health", "port": "http"}}
    return {
        "startupProbe": {
            **health,
            "periodSeconds": period,
            "timeoutSeconds": 5,
            "failureThreshold": math.ceil(ctx.startup_budget_s() / period),
        },
        "readinessProbe": {**health, "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3},
        "livenessProbe": {**health, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6},
    }


def shm_gib(gpus: int, multi_node: bool) -> int:
    """/dev/shm size: NCCL and vLLM's TP message queues use it; 16 GiB for multi-GPU (the LWS example uses
    15Gi), a little for one GPU."""
    return 16 if gpus > 1 or multi_node else 2


def onprem_resources(gpus: int) -> tuple[int, int]:
    """On-prem hosts are not in the catalog: 4 cores and 24 GiB per GPU (at least 32 GiB), which fits the
    common 8-GPU servers (>= 64 cores, >= 1 TiB) with room for their own daemons."""
    return 4 * gpus, max(32, 24 * gpus)


def container(ctx: Ctx, role: PlanRole, gpus: int, *, kind: str, pool: str = "cloud") -> Obj:
    """kind: single (Deployment), leader or worker (LeaderWorkerSet)."""
    multi = kind != "single"
    cpu, mem = onprem_resources(gpus) if pool == "onprem" else ctx.pod_resources(gpus)
    shm = shm_gib(gpus, multi)
    res_req: Obj = {"cpu": str(cpu), "memory": f"{mem}Gi"}
    res_lim: Obj = {"memory": f"{mem + shm}Gi"}
    if not ctx.plan.nodes.needs_dra:
        res_req["nvidia.com/gpu"] = res_lim["nvidia.com/gpu"] = str(gpus)
    efa = 0 if pool == "onprem" else efa_interfaces(ctx, gpus, multi=multi)
    if efa:
        res_req["vpc.amazonaws.com/efa"] = res_lim["vpc.amazonaws.com/efa"] = str(efa)
    serve = ["vllm", "serve", model_ref(ctx), *vllm_args(ctx, role)]
    out: Obj = {"name": "vllm", "image": ctx.opts.engine_image, "imagePullPolicy": "IfNotPresent"}
    if kind == "single":
        out |= {"command": serve[:3], "args": serve[3:]}
    elif kind == "leader":
        script = f"bash {RAY_SCRIPT} leader --ray_cluster_size=$(LWS_GROUP_SIZE) && exec {shlex.join(serve)}"
        out |= {"command": ["/bin/bash", "-c"], "args": [script]}
    else:
        out |= {
            "command": ["/bin/bash", "-c"],
            "args": [f"bash {RAY_SCRIPT} worker --ray_address=$(LWS_LEADER_ADDRESS)"],
        }
    out["env"] = _env(ctx, role, multi)
    if kind != "worker":
        ports = [{"name": "http", "containerPort": ENGINE_PORT}]
        if ctx.kv_aware:
            ports.append({"name": "kv-events", "containerPort": KV_EVENTS_PORT})
        if ctx.plan.mode == "disaggregated":
            ports.append({"name": "nixl", "containerPort": NIXL_SIDE_CHANNEL_PORT})
        out["ports"] = ports
        out |= _probes(ctx)
        out["lifecycle"] = {"preStop": {"sleep": {"seconds": PRE_STOP_S}}}
    out["resources"] = {"requests": res_req, "limits": res_lim}
    if ctx.plan.nodes.needs_dra:
        out["resources"]["claims"] = [{"name": "gpus"}]
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if not ctx.opts.model_s3_uri:
        mounts.append({"name": "model-cache", "mountPath": MODEL_MOUNT})
    out["volumeMounts"] = mounts
    sec: Obj = {"allowPrivilegeEscalation": False}
    if efa:
        sec["capabilities"] = {"add": ["IPC_LOCK"]}  # EFA registers (pins) GPU and host memory
    out["securityContext"] = sec
    return out


def pod_template(ctx: Ctx, role: PlanRole, gpus: int, *, kind: str, pool: str = "cloud") -> Obj:
    serving = "false" if kind == "worker" else "true"
    labels = ctx.labels(
        "engine", **{"eksinfer.io/role": role.name, "eksinfer.io/pool": pool, "eksinfer.io/serving": serving}
    )
    annotations = {
        "eksinfer.io/load-time-s": str(round(ctx.plan.prediction.load_time_s)),
        "eksinfer.io/node-startup-s": str(ctx.node_startup_s()),
    }
    if pool == "cloud":
        annotations["karpenter.sh/do-not-disrupt"] = "true"
    volumes: list[Obj] = [
        {
            "name": "dshm",
            "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_gib(gpus, kind != 'single')}Gi"},
        }
    ]
    if not ctx.opts.model_s3_uri:
        volumes.append(
            {"name": "model-cache", "persistentVolumeClaim": {"claimName": f"{ctx.name}-model-cache"}}
        )
    spec: Obj = {
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace_s(ctx),
        "nodeSelector": {"eks.amazonaws.com/compute-type": "hybrid"}
        if pool == "onprem"
        else ctx.node_selector(),
        "tolerations": [{"key": GPU_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container(ctx, role, gpus, kind=kind, pool=pool)],
        "volumes": volumes,
    }
    if ctx.opts.model_s3_uri:
        spec["serviceAccountName"] = f"{ctx.name}-engine"  # bind an S3 read role with EKS Pod Identity
    else:
        spec["automountServiceAccountToken"] = False
    if ctx.plan.nodes.needs_dra:
        spec["resourceClaims"] = [{"name": "gpus", "resourceClaimTemplateName": f"{ctx.name}-gpus"}]
    if kind == "single" and pool == "cloud":
        # Multi-node groups stay inside one zone (exclusive-topology); single-node replicas spread.
        spec["topologySpreadConstraints"] = ctx.zone_spread(selector(ctx, role, pool))
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": spec}


def selector(ctx: Ctx, role: PlanRole, pool: str = "cloud") -> dict[str, str]:
    return {"app.kubernetes.io/instance": ctx.name, "eksinfer.io/role": role.name, "eksinfer.io/pool": pool}


def deployment(ctx: Ctx, role: PlanRole, pool: str = "cloud") -> Obj:
    """The cloud pool's replicas belong to KEDA (a `spec.replicas` here would reset its scale on every
    `kubectl apply`); the on-prem pool is fixed-size and keeps it."""
    name = ctx.workload_name(role) + ("-onprem" if pool == "onprem" else "")
    spec: Obj = {}
    if pool == "onprem" and ctx.plan.on_prem:
        spec["replicas"] = ctx.plan.on_prem.replicas
    spec |= {
        "selector": {"matchLabels": selector(ctx, role, pool)},
        # One extra replica at a time: a rollout needs at most one GPU slot of headroom.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": pod_template(ctx, role, role.engine.gpus_per_replica, kind="single", pool=pool),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": ctx.meta(name, "engine", {"eksinfer.io/role": role.name, "eksinfer.io/pool": pool}),
        "spec": spec,
    }


def pdb(ctx: Ctx, role: PlanRole, pool: str = "cloud") -> Obj:
    name = ctx.workload_name(role) + ("-onprem" if pool == "onprem" else "")
    extra = {"eksinfer.io/role": role.name, "eksinfer.io/pool": pool}
    return ctx.pdb(name, "engine", selector(ctx, role, pool), extra)


def lws_spec(ctx: Ctx, role: PlanRole) -> Obj:
    e = role.engine
    gpus = e.gpus_per_replica // e.nodes_per_replica
    # No `replicas`: KEDA scales the LeaderWorkerSet (or the DisaggregatedSetRoleScaler) and an apply must
    # not reset it.
    return {
        "startupPolicy": "LeaderCreated",
        "rolloutStrategy": {
            "type": "RollingUpdate",
            "rollingUpdateConfiguration": {"maxSurge": 0, "maxUnavailable": 1},
        },
        "networkConfig": {"subdomainPolicy": "UniquePerReplica"},
        "leaderWorkerTemplate": {
            "size": e.nodes_per_replica,
            "restartPolicy": "RecreateGroupOnPodRestart",
            "leaderTemplate": pod_template(ctx, role, gpus, kind="leader"),
            "workerTemplate": pod_template(ctx, role, gpus, kind="worker"),
        },
    }


def _exclusive() -> dict[str, str]:
    # Keep each group's nodes in one zone (EFA does not cross AZs); one group per zone at most.
    return {GROUP_SIZE_ANNOTATION: "topology.kubernetes.io/zone"}


def leaderworkerset(ctx: Ctx, role: PlanRole) -> Obj:
    meta = ctx.meta(ctx.workload_name(role), "engine", {"eksinfer.io/role": role.name})
    meta["annotations"] = _exclusive()
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": meta,
        "spec": lws_spec(ctx, role),
    }


def disaggregated_set(ctx: Ctx) -> Obj:
    roles = []
    for role in ctx.plan.roles:
        roles.append(
            {
                "name": role.name,
                "metadata": {"labels": {"eksinfer.io/role": role.name}, "annotations": _exclusive()},
                "scaling": {
                    "mode": "External"
                },  # KEDA scales the role through its DisaggregatedSetRoleScaler
                "spec": lws_spec(ctx, role),
            }
        )
    return {
        "apiVersion": "disaggregatedset.x-k8s.io/v1",
        "kind": "DisaggregatedSet",
        "metadata": ctx.meta(ctx.name, "engine"),
        "spec": {"slices": 1, "roles": roles},
    }


def service(ctx: Ctx, role: PlanRole, pool: str = "cloud") -> Obj:
    name = ctx.workload_name(role) + ("-onprem" if pool == "onprem" else "")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ctx.meta(name, "engine", {"eksinfer.io/role": role.name, "eksinfer.io/pool": pool}),
        "spec": {
            "type": "ClusterIP",
            "selector": {**selector(ctx, role, pool), "eksinfer.io/serving": "true"},
            "ports": [{"name": "http", "port": ENGINE_PORT, "targetPort": "http"}],
        },
    }


def model_cache_pvc(ctx: Ctx) -> Obj:
    p = ctx.plan
    weights = p.prediction.weight_gib_per_gpu * max(r.engine.gpus_per_replica for r in p.roles)
    size = max(
        100, math.ceil(weights * 1.25 / 100) * 100
    )  # weights + 25% (tokenizer, safetensors index, revisions)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": ctx.meta(f"{ctx.name}-model-cache", "engine"),
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": ctx.opts.model_cache_storage_class,
            "resources": {"requests": {"storage": f"{size}Gi"}},
        },
    }


def resource_claim_template(ctx: Ctx) -> Obj:
    gpus = ctx.plan.roles[0].engine.gpus_per_replica
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": ctx.meta(f"{ctx.name}-gpus", "engine"),
        "spec": {
            "spec": {
                "devices": {
                    "requests": [
                        {
                            "name": "gpu",
                            "exactly": {
                                "deviceClassName": "gpu.nvidia.com",
                                "allocationMode": "ExactCount",
                                "count": gpus,
                            },
                        }
                    ]
                }
            }
        },
    }


def service_account(ctx: Ctx) -> Obj:
    meta = ctx.meta(f"{ctx.name}-engine", "engine")
    meta["annotations"] = {
        "eksinfer.io/needs": "EKS Pod Identity association with s3:GetObject/ListBucket on the model"
    }
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}


def engine_objects(ctx: Ctx) -> list[Obj]:
    p = ctx.plan
    objs: list[Obj] = [model_cache_pvc(ctx)] if not ctx.opts.model_s3_uri else [service_account(ctx)]
    if p.nodes.needs_dra:
        objs.append(resource_claim_template(ctx))
    multi = any(r.engine.nodes_per_replica > 1 for r in p.roles)
    if multi and p.mode == "disaggregated" and ctx.opts.pd_backend == "disaggregatedset":
        objs.append(disaggregated_set(ctx))
    for role in p.roles:
        if not (multi and p.mode == "disaggregated" and ctx.opts.pd_backend == "disaggregatedset"):
            objs.append(
                leaderworkerset(ctx, role) if role.engine.nodes_per_replica > 1 else deployment(ctx, role)
            )
        objs += [service(ctx, role), pdb(ctx, role)]
    if p.on_prem and p.on_prem.replicas > 0:
        role = next(r for r in p.roles if r.name in ("engine", "decode"))
        objs += [
            deployment(ctx, role, pool="onprem"),
            service(ctx, role, pool="onprem"),
            pdb(ctx, role, pool="onprem"),
        ]
    return objs
