"""Render options and the values every builder derives from a plan (names, labels, node placement, sizes).

One template set serves all three node-provisioning modes: the instance label prefix is
`eks.amazonaws.com` on EKS Auto Mode and `karpenter.k8s.aws` on self-managed Karpenter (the switch the
GenAI on EKS Starter Kit makes in its templates, aws-samples/sample-genai-on-eks-starter-kit
`components/llm-model/vllm/*.template.yaml`); managed node groups are selected by
`eks.amazonaws.com/nodegroup`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from eksinfer import __version__
from eksinfer.catalog import mig_instances_per_gpu
from eksinfer.catalog.bedrock import MODEL_ID
from eksinfer.errors import ConfigError
from eksinfer.planner.schema import PLAN_SCHEMA_VERSION, Plan, PlanRole

if TYPE_CHECKING:
    from eksinfer.autoscale.recommendation import Recommendation

Obj = dict[str, Any]

ENGINE_PORT = 8000
KV_EVENTS_PORT = 5557  # vLLM's documented default KV-event endpoint tcp://*:5557 (vllm/config/kv_events.py)
NIXL_SIDE_CHANNEL_PORT = 5600
GATEWAY_PORT = 8000
# PYTHONHASHSEED of the engine and gateway pods: vLLM roots its block-hash chain on it, so both must carry the
# same value (it is not eksinfer.kvcache.hashing.DEFAULT_HASH_SEED, vLLM's root when the variable is unset).
HASH_SEED = "0"
GPU_TAINT = "nvidia.com/gpu"
POOL_GROUP_LABEL = "eksinfer.io/gpu-pool"
LABEL_PREFIX = {"auto-mode": "eks.amazonaws.com", "karpenter": "karpenter.k8s.aws"}
# EFA interfaces per instance type family (AWS "Supported instance types" for EFA; p5/p5e 32 x 100 Gbit/s,
# p5en and p6-b200 16 / 8 of the newer 200 / 400 Gbit/s cards, p4d 4 x 100; p6-b300 6400 Gbit/s on 16 EFA
# cards of its 17, card 0 the primary ENA). The plan carries only bandwidth.
EFA_INTERFACES = {"p5": 32, "p5e": 32, "p5en": 16, "p6-b200": 8, "p6-b300": 16, "p4d": 4, "p4de": 4}


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """Choices the plan does not make: where things live in the cluster and how weights reach the GPUs."""

    namespace: str = "inference"
    cluster_name: str = "eksinfer"
    engine_image: str = "vllm/vllm-openai:v0.32.0"
    gateway_image: str = f"ghcr.io/eksinfer/eksinfer:{__version__}"
    device_plugin_image: str = "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"
    model_s3_uri: str | None = None  # s3://bucket/prefix: stream weights with the Run:ai loader, no cache PVC
    model_cache_storage_class: str = "efs-sc"  # a ReadWriteMany class (EFS or FSx for Lustre CSI)
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    prometheus_release: str = "kube-prometheus-stack"  # kube-prometheus-stack selects by `release`
    # How clients outside the cluster reach the gateway (deploy/exposure.py); none: port-forward or your own.
    expose: Literal["none", "httproute", "alb"] = "none"
    gateway_ref: str | None = None  # NAMESPACE/NAME[/LISTENER] of an existing Gateway (httproute)
    certificate_arn: str | None = None  # ACM certificate for the ALB's HTTPS listener (alb)
    hostname: str | None = None
    node_role: str | None = None  # IAM role of GPU nodes; default per mode
    image_snapshot_id: str | None = None  # EBS snapshot with the engine image pre-pulled (Bottlerocket)
    soci_parallel_pull: bool = True
    pd_backend: Literal["disaggregatedset", "lws"] = "disaggregatedset"
    hf_token_secret: str = "hf-token"
    # Capacity reservations (ODCR or Capacity Blocks for ML): `cr-...` ids or `key=value` tags (Karpenter).
    capacity_reservations: tuple[str, ...] = ()
    placement_group: str | None = None  # an existing cluster placement group for multi-node EFA groups
    route_headers: bool = False  # gateway response headers naming engine pods (trusted clients only)
    gateway_replicas: int = 2  # at least 2, spread over nodes and zones
    bedrock_role_arn: str | None = None  # IRSA role for the Bedrock tier; None: EKS Pod Identity (bedrock.py)
    autoscale: Recommendation | None = None  # `render --autoscale FILE`: what `eksinfer autoscale` chose
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Ctx:
    plan: Plan
    opts: RenderOptions

    # -- names ---------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def ns(self) -> str:
        return self.opts.namespace

    @property
    def pool_name(self) -> str:
        return f"{self.name}-gpu"

    @property
    def mode(self) -> str:
        return self.plan.nodes.provisioning

    @property
    def kv_aware(self) -> bool:
        return self.plan.routing.strategy == "kv-aware"

    def workload_name(self, role: PlanRole) -> str:
        return f"{self.name}-{role.name}"

    def served_name(self) -> str:
        return self.plan.model.id

    # -- labels --------------------------------------------------------------------------------------------
    def labels(self, component: str, **extra: str) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": {"engine": "vllm", "gateway": "eksinfer-gateway"}.get(
                component, "eksinfer"
            ),
            "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": "eksinfer",
            **self.opts.labels,
            **extra,
        }

    def meta(
        self, name: str, component: str, extra: Mapping[str, str] | None = None, *, namespaced: bool = True
    ) -> Obj:
        out: Obj = {"name": name, "namespace": self.ns} if namespaced else {"name": name}
        out["labels"] = self.labels(component, **(extra or {}))
        return out

    # -- node placement ------------------------------------------------------------------------------------
    @property
    def label_prefix(self) -> str:
        return LABEL_PREFIX.get(self.mode, "eks.amazonaws.com")

    def node_selector(self) -> dict[str, str]:
        if self.mode == "managed-node-group":
            return {"eks.amazonaws.com/nodegroup": self.pool_name}
        # Every NodePool of this plan (primary, on-demand fallback) labels its nodes with the pool group, so
        # pods follow whichever one had capacity; the pools' requirements pin the instance types.
        return {POOL_GROUP_LABEL: self.pool_name}

    @property
    def mig_slices(self) -> int:
        """MIG instances per GPU of the plan's profile, e.g. `all-1g.10gb` on H100: 7; memory bounds it too,
        so B300's `all-1g.67gb` is 4 (catalog.mig_instances_per_gpu)."""
        profile = self.plan.nodes.mig_profile
        if not profile:
            return 1
        return mig_instances_per_gpu(self.plan.instance.gpu, profile)

    @property
    def efa_interfaces(self) -> int:
        return EFA_INTERFACES.get(self.plan.instance.family, 1) if self.plan.instance.efa_gbps > 0 else 0

    def instance_memory_gib(self) -> float:
        """Host memory as the plan carries it; 4 GiB per vCPU (the smallest ratio among GPU types) for a plan
        written before it did, a conservative ratio that still schedules."""
        inst = self.plan.instance
        return inst.memory_gib if inst.memory_gib is not None else inst.vcpus * 4.0

    def pod_resources(self, gpus: int) -> tuple[int, int]:
        """(cpu cores, memory GiB) for a pod holding `gpus` devices: its share of the node, 85% / 80% of it
        so kubelet reservations and the GPU daemon sets still fit."""
        inst = self.plan.instance
        share = gpus / (inst.gpus * self.mig_slices)
        cpu = max(1, math.floor(inst.vcpus * share * 0.85))
        memory = max(4, math.floor(self.instance_memory_gib() * share * 0.80))
        return cpu, memory

    def startup_budget_s(self) -> int:
        """Start-up probe budget: twice the predicted load time plus 5 minutes for image pull, CUDA-graph
        capture and compile, never under 10 minutes (vLLM of any size routinely needs several)."""
        return max(600, math.ceil(2 * self.plan.prediction.load_time_s + 300))

    def longest_request_s(self) -> int:
        """How long the longest ordinary request runs: TTFT plus 5x the mean output at the predicted TPOT.
        Output lengths are roughly exponential, whose 99th percentile is ln(100) = 4.6x the mean; 5x
        rounds that up. Clamped to [60 s, 1 h] so shutdown neither cuts streams nor hangs a node drain."""
        p = self.plan
        tokens = min(5 * p.traffic.output_tokens, max(1, p.roles[0].engine.max_model_len))
        return min(3600, max(60, math.ceil(p.prediction.ttft_s + tokens * p.prediction.tpot_s)))

    def zone_spread(self, selector: Mapping[str, str]) -> list[Obj]:
        """Spread over zones when capacity allows (ScheduleAnyway: a GPU shortage in one zone must not leave
        pods Pending)."""
        return [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": dict(selector)},
            }
        ]

    def pdb(self, name: str, component: str, selector: Mapping[str, str], extra: Mapping[str, str]) -> Obj:
        """At most one pod of the set evicted at a time (node drains, Karpenter expiry); maxUnavailable, not
        minAvailable, so a single replica never blocks a drain forever."""
        return {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": self.meta(name, component, extra),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(selector)}},
        }

    def node_startup_s(self) -> int:
        return max(60, math.ceil(self.plan.nodes.node_startup_s))

    def max_nodes(self) -> int:
        """The node-tier limit: the plan's, or the autoscale recommendation's when rendering with one."""
        rec = self.opts.autoscale
        return rec.max_nodes if rec is not None else self.plan.nodes.max_nodes


def make_ctx(plan: Plan, opts: RenderOptions | None = None) -> Ctx:
    """Checks what render needs beyond the schema and returns the context."""
    major = plan.schema_version.rsplit("/", 1)[-1]
    if major != PLAN_SCHEMA_VERSION.rsplit("/", 1)[-1]:
        raise ConfigError(f"unsupported plan version {plan.schema_version!r}", field="schema_version")
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", plan.name):
        # Object names append up to 23 characters ("-engine-onprem", "-model-cache", ...) and Service
        # names must stay DNS labels of at most 63.
        raise ConfigError("must be a DNS label of at most 40 characters (a-z, 0-9, -)", field="name")
    if plan.nodes.mig_profile and plan.nodes.provisioning == "auto-mode":
        raise ConfigError(
            "MIG needs a node configuration EKS Auto Mode does not allow; use karpenter or "
            "managed-node-group",
            field="nodes.mig_profile",
        )
    if plan.nodes.needs_dra and plan.nodes.provisioning != "managed-node-group":
        raise ConfigError(
            "Dynamic Resource Allocation is not supported by Karpenter or Auto Mode; use managed-node-group",
            field="nodes.needs_dra",
        )
    if not plan.roles:
        raise ConfigError("a plan needs at least one role", field="roles")
    opts = opts or RenderOptions()
    _check_exposure(opts)
    _check_fallback(plan, opts)
    if (opts.capacity_reservations or opts.placement_group) and plan.nodes.provisioning != "karpenter":
        raise ConfigError(
            "capacity reservations and placement groups are rendered for Karpenter's EC2NodeClass only; "
            "the plan provisions with " + plan.nodes.provisioning,
            field="--capacity-reservation" if opts.capacity_reservations else "--placement-group",
        )
    if plan.instance.capacity_type == "capacity-block" and not opts.capacity_reservations:
        raise ConfigError(
            "the plan is priced for a Capacity Block for ML: name its reservation (cr-... or KEY=VALUE) so "
            "the nodes launch into it (eksinfer render PLAN.json --capacity-reservation ...)",
            field="--capacity-reservation",
        )
    for term in opts.capacity_reservations:
        if not (re.fullmatch(r"cr-[0-9a-z]+", term) or re.fullmatch(r"[^=\s]+=[^=\s]+", term)):
            raise ConfigError(
                f"{term!r} is neither a cr-... id nor KEY=VALUE", field="--capacity-reservation"
            )
    for i, role in enumerate(plan.roles):
        if plan.routing.strategy == "kv-aware" and not role.engine.enable_prefix_caching:
            raise ConfigError(
                "a KV-aware gateway needs prefix caching on", field=f"roles[{i}].engine.enable_prefix_caching"
            )
        if role.engine.nodes_per_replica > 1 and role.engine.gpus_per_replica % role.engine.nodes_per_replica:
            raise ConfigError(
                "GPUs do not split evenly across nodes", field=f"roles[{i}].engine.gpus_per_replica"
            )
    return Ctx(plan, opts)


def _check_fallback(plan: Plan, opts: RenderOptions) -> None:
    """The Bedrock tier's ids end up in an IAM policy and a gateway config: refuse what neither accepts."""
    fallback = plan.fallback
    if fallback is not None:
        if not MODEL_ID.match(fallback.model_id):
            raise ConfigError(
                "not a Bedrock model id, inference-profile id or ARN", field="fallback.model_id"
            )
        if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", fallback.region):
            raise ConfigError(f"{fallback.region!r} is not an AWS region name", field="fallback.region")
    if opts.bedrock_role_arn is None:
        return
    if fallback is None:
        raise ConfigError("the plan has no Bedrock fallback to give a role to", field="--bedrock-role-arn")
    if not re.fullmatch(r"arn:aws[-a-z]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}", opts.bedrock_role_arn):
        raise ConfigError("give an IAM role ARN: arn:aws:iam::ACCOUNT:role/NAME", field="--bedrock-role-arn")


def _check_exposure(opts: RenderOptions) -> None:
    if opts.expose == "httproute" and not re.fullmatch(
        r"[a-z0-9-]+/[a-z0-9.-]+(/[a-z0-9.-]+)?", opts.gateway_ref or ""
    ):
        raise ConfigError(
            "an HTTPRoute attaches to an existing Gateway: give NAMESPACE/NAME[/LISTENER]",
            field="--gateway-ref",
        )
    if opts.expose == "alb" and not re.fullmatch(
        r"arn:aws[-a-z]*:acm:[^:]+:\d{12}:certificate/[-0-9a-f]+", opts.certificate_arn or ""
    ):
        raise ConfigError(
            "an ALB serves HTTPS with an ACM certificate: give arn:aws:acm:REGION:ACCOUNT:certificate/ID",
            field="--certificate-arn",
        )
    if opts.hostname is not None and not re.fullmatch(r"[a-z0-9*]([-a-z0-9.]*[a-z0-9])?", opts.hostname):
        raise ConfigError(f"{opts.hostname!r} is not a DNS name", field="--hostname")
