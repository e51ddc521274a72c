"""The GPU node tier for each provisioning mode, from one template set.

    auto-mode           karpenter.sh/v1 NodePool -> the built-in `default` NodeClass, or a custom
                        eks.amazonaws.com/v1 NodeClass when the node needs more than its 80 GiB ephemeral disk
    karpenter           NodePool + karpenter.k8s.aws/v1 EC2NodeClass (Bottlerocket NVIDIA variant with SOCI
                        parallel pull; AL2023 NVIDIA when MIG, where the GPU Operator's MIG manager runs)
    managed-node-group  an eksctl ClusterConfig fragment with Cluster Autoscaler tags (the path for DRA)

Capacity: the primary NodePool allows the plan's instance type plus every alternative type from the plan that
can host the same pods (GPU memory, GPUs, vCPUs and memory per GPU at least the plan's, FP8 support when the
weights are FP8); Karpenter launches the cheapest available of them, so the list is ordered but not weighted
further. A spot plan gets a second, on-demand NodePool of lower weight that Karpenter uses when spot has no
capacity. Capacity reservations (ODCR, Capacity Blocks for ML) and a cluster placement group are EC2NodeClass
options (`--capacity-reservation`, `--placement-group`); with reservations the primary pool also allows the
`reserved` capacity type, which Karpenter prefers.

The disruption policy never consolidates a busy GPU node: empty nodes go after `consolidateAfter`, budgets
forbid Underutilized and Drifted disruption (the "drop empty, keep busy" budgets of
aws-samples/sample-genai-on-eks-starter-kit, `builder/karpenter_eks_auto_mode.yaml`), and engine pods carry
`karpenter.sh/do-not-disrupt`.
"""

from __future__ import annotations

import math

from eksinfer.deploy.addons import DEVICE_PLUGIN_OPT_OUT, device_plugin_opt_out
from eksinfer.deploy.context import GPU_TAINT, POOL_GROUP_LABEL, Ctx, Obj

AUTO_DEFAULT_EPHEMERAL_GIB = 80  # EKS Auto Mode default NodeClass ephemeral storage (create-node-class.adoc)
IMAGE_GIB = 30  # vLLM CUDA image unpacked, plus room for compile caches


def node_disk_gib(ctx: Ctx) -> int:
    """Disk for the image, caches and one node-local copy of the weights on this node, rounded up "
    "to 50 GiB."""
    p = ctx.plan
    weights = p.prediction.weight_gib_per_gpu * p.instance.gpus
    return int(math.ceil((weights + IMAGE_GIB + 20) / 50) * 50)


def needs_custom_auto_class(ctx: Ctx) -> bool:
    """Tier 1 fits the built-in class (80 GiB; weights live on the shared cache or stream from S3); multi-GPU
    nodes get a custom one with `node_disk_gib` and the fastest gp3 settings (image pull is often most of a
    cold start: AWS blog "Introducing Seekable OCI Parallel Pull mode for Amazon EKS")."""
    return ctx.plan.tier >= 2


PRIMARY_WEIGHT = 50
FALLBACK_WEIGHT = 10


def _fits(ctx: Ctx, instance_type: str) -> bool:
    """Can `instance_type` host this plan's engine pods unchanged (same GPU count, same requests)?"""
    from eksinfer.catalog import get_gpu, get_instance

    p = ctx.plan
    try:
        alt = get_instance(instance_type)
        gpu = get_gpu(alt.gpu)
    except Exception:  # a type the catalog does not know is not offered
        return False
    per_pod = max(r.engine.gpus_per_replica for r in p.roles)
    fp8 = any(r.engine.precision == "fp8" for r in p.roles)
    return (
        alt.gpus >= per_pod
        and (alt.gpu.lower() == p.instance.gpu.lower() or gpu.memory_gib >= p.instance.gpu_memory_gib)
        and alt.vcpus / alt.gpus >= p.instance.vcpus / p.instance.gpus
        and alt.memory_gib / alt.gpus >= ctx.instance_memory_gib() / p.instance.gpus
        and (gpu.fp8_tflops is not None or not fp8)
    )


def instance_types(ctx: Ctx) -> list[str]:
    """The plan's type first, then compatible alternatives (best first). Multi-node and MIG plans keep the
    one type: EFA interface counts and MIG layouts are per type."""
    p = ctx.plan
    types = [p.instance.type]
    if p.nodes.mig_profile or any(r.engine.nodes_per_replica > 1 for r in p.roles):
        return types
    for alt in p.alternatives:
        if alt.instance_type not in types and _fits(ctx, alt.instance_type):
            types.append(alt.instance_type)
    return types


def _families(types: list[str]) -> list[str]:
    return sorted({t.split(".", 1)[0] for t in types})


def _requirements(ctx: Ctx, capacity: list[str]) -> list[Obj]:
    types = instance_types(ctx)
    return [
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": capacity},
        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
        {"key": f"{ctx.label_prefix}/instance-family", "operator": "In", "values": _families(types)},
        {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": types},
    ]


def nodepool(ctx: Ctx, *, fallback: bool = False) -> Obj:
    """The primary pool, or (fallback) the on-demand pool behind a spot plan."""
    auto = ctx.mode == "auto-mode"
    if auto:
        ref = {
            "group": "eks.amazonaws.com",
            "kind": "NodeClass",
            "name": ctx.pool_name if needs_custom_auto_class(ctx) else "default",
        }
    else:
        ref = {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": ctx.pool_name}
    labels = {"eksinfer.io/pool": "cloud", POOL_GROUP_LABEL: ctx.pool_name}
    if ctx.plan.nodes.mig_profile:
        labels["nvidia.com/mig.config"] = ctx.plan.nodes.mig_profile  # read by the GPU Operator MIG manager
    if device_plugin_opt_out(ctx):
        labels.update(DEVICE_PLUGIN_OPT_OUT)  # the node brings its own plugin (see addons.py)
    if fallback:
        capacity = ["on-demand"]
    else:
        # Karpenter's capacity types: a Capacity Block is reserved capacity; a commitment (reserved pricing:
        # Reserved Instances, Savings Plans) bills on-demand nodes
        launch = {"capacity-block": "reserved", "reserved": "on-demand"}
        capacity = [launch.get(ctx.plan.instance.capacity_type, ctx.plan.instance.capacity_type)]
        if ctx.opts.capacity_reservations and capacity != ["reserved"]:
            capacity.insert(0, "reserved")
    consolidate_after = f"{max(300, ctx.node_startup_s())}s"  # keep an empty node as long as a new one takes
    name = f"{ctx.pool_name}-od" if fallback else ctx.pool_name
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": ctx.meta(name, "nodes", namespaced=False),
        "spec": {
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeClassRef": ref,
                    "requirements": _requirements(ctx, capacity),
                    "taints": [{"key": GPU_TAINT, "effect": "NoSchedule"}],
                    "expireAfter": "336h" if auto else "720h",  # Auto Mode caps node life at 21 days
                    "terminationGracePeriod": "24h",
                },
            },
            "disruption": {
                "consolidationPolicy": "WhenEmpty",
                "consolidateAfter": consolidate_after,
                "budgets": [
                    {"nodes": "100%", "reasons": ["Empty"]},
                    {"nodes": "0", "reasons": ["Underutilized", "Drifted"]},
                ],
            },
            # Node-tier autoscaling limit: the plan's max_nodes (or the autoscale recommendation's) in GPUs
            # (Karpenter sums node capacity).
            "limits": {"nvidia.com/gpu": str(ctx.max_nodes() * ctx.plan.instance.gpus)},
            # Karpenter tries higher weights first: spot (or reserved) before the on-demand fallback.
            "weight": FALLBACK_WEIGHT if fallback else PRIMARY_WEIGHT,
        },
    }


def _reservation_terms(ctx: Ctx) -> list[Obj]:
    terms: list[Obj] = []
    for term in ctx.opts.capacity_reservations:
        if term.startswith("cr-"):
            terms.append({"id": term})
        else:
            key, value = term.split("=", 1)
            terms.append({"tags": {key: value}})
    return terms


def _selector_terms(ctx: Ctx) -> list[Obj]:
    return [{"tags": {"karpenter.sh/discovery": ctx.opts.cluster_name}}]


def auto_nodeclass(ctx: Ctx) -> Obj:
    return {
        "apiVersion": "eks.amazonaws.com/v1",
        "kind": "NodeClass",
        "metadata": ctx.meta(ctx.pool_name, "nodes", namespaced=False),
        "spec": {
            "role": ctx.opts.node_role or "AmazonEKSAutoNodeRole",
            "subnetSelectorTerms": _selector_terms(ctx),
            "securityGroupSelectorTerms": _selector_terms(ctx),
            "ephemeralStorage": {"size": f"{node_disk_gib(ctx)}Gi", "iops": 16000, "throughput": 1000},
            "tags": {"eksinfer.io/deployment": ctx.name},
        },
    }


def bottlerocket_user_data(ctx: Ctx) -> str:
    """Bottlerocket settings TOML: SOCI parallel pull (bottlerocket.dev 1.44 settings reference,
    `settings.container-runtime-plugins.soci-snapshotter`)."""
    if not ctx.opts.soci_parallel_pull:
        return ""
    return "\n".join(
        [
            "[settings.container-runtime]",
            'snapshotter = "soci"',
            "[settings.container-runtime-plugins.soci-snapshotter]",
            'pull-mode = "parallel-pull-unpack"',
            "[settings.container-runtime-plugins.soci-snapshotter.parallel-pull-unpack]",
            "max-concurrent-downloads-per-image = 20",
            'concurrent-download-chunk-size = "16mb"',
            "max-concurrent-unpacks-per-image = 12",
            "",
        ]
    )


def ec2nodeclass(ctx: Ctx) -> Obj:
    mig = bool(ctx.plan.nodes.mig_profile)
    disk = node_disk_gib(ctx)
    spec: Obj = {
        "role": ctx.opts.node_role or f"KarpenterNodeRole-{ctx.opts.cluster_name}",
        # With an alias Karpenter picks the NVIDIA variant for GPU types (drivers preinstalled). Bottlerocket
        # also ships the device plugin and SOCI; MIG needs the GPU Operator's MIG manager, so AL2023 there.
        "amiSelectorTerms": [{"alias": "al2023@latest" if mig else "bottlerocket@latest"}],
        "subnetSelectorTerms": _selector_terms(ctx),
        "securityGroupSelectorTerms": _selector_terms(ctx),
        "tags": {"eksinfer.io/deployment": ctx.name},
    }
    if terms := _reservation_terms(ctx):
        spec["capacityReservationSelectorTerms"] = terms
    if ctx.opts.placement_group:
        spec["placementGroupSelector"] = {"name": ctx.opts.placement_group}
    if mig:
        spec["blockDeviceMappings"] = [_ebs("/dev/xvda", disk, root=True)]
        spec["instanceStorePolicy"] = "RAID0"
        return _nodeclass_obj(ctx, spec)
    data = _ebs("/dev/xvdb", disk)
    if ctx.opts.image_snapshot_id:
        # The data volume restored from a snapshot already holds the pulled image; RAID0 would move
        # containerd off it onto empty instance storage, so it stays off here.
        data["ebs"]["snapshotID"] = ctx.opts.image_snapshot_id
    else:
        spec["instanceStorePolicy"] = "RAID0"  # NVMe RAID0 for containerd and emptyDir (Karpenter v1)
    spec["blockDeviceMappings"] = [_ebs("/dev/xvda", 10, root=True), data]
    if user_data := bottlerocket_user_data(ctx):
        spec["userData"] = user_data
    return _nodeclass_obj(ctx, spec)


def _ebs(device: str, size_gib: int, *, root: bool = False) -> Obj:
    out: Obj = {
        "deviceName": device,
        "ebs": {
            "volumeSize": f"{size_gib}Gi",
            "volumeType": "gp3",
            "iops": 16000,
            "throughput": 1000,
            "encrypted": True,
            "deleteOnTermination": True,
        },
    }
    if root:
        out["rootVolume"] = True
    return out


def _nodeclass_obj(ctx: Ctx, spec: Obj) -> Obj:
    return {
        "apiVersion": "karpenter.k8s.aws/v1",
        "kind": "EC2NodeClass",
        "metadata": ctx.meta(ctx.pool_name, "nodes", namespaced=False),
        "spec": spec,
    }


def eksctl_config(ctx: Ctx) -> Obj:
    """A managed node group (eksctl) tagged for Cluster Autoscaler auto-discovery and scale from zero."""
    p, inst = ctx.plan, ctx.plan.instance
    tpl = "k8s.io/cluster-autoscaler/node-template"
    labels = {"eksinfer.io/pool": "cloud"}
    if p.nodes.mig_profile:
        labels["nvidia.com/mig.config"] = p.nodes.mig_profile
    if device_plugin_opt_out(ctx):
        labels.update(DEVICE_PLUGIN_OPT_OUT)  # the DRA driver advertises the GPUs
    group: Obj = {
        "name": ctx.pool_name,
        "instanceType": inst.type,
        "amiFamily": "AmazonLinux2023",  # the EKS-optimised accelerated AMI: NVIDIA driver + toolkit
        "minSize": 0,
        "desiredCapacity": p.nodes.total_nodes,
        "maxSize": ctx.max_nodes(),
        "spot": inst.capacity_type == "spot",
        "volumeSize": node_disk_gib(ctx),
        "volumeType": "gp3",
        "labels": labels,
        "taints": [{"key": GPU_TAINT, "value": "true", "effect": "NoSchedule"}],
        "tags": {
            "k8s.io/cluster-autoscaler/enabled": "true",
            f"k8s.io/cluster-autoscaler/{ctx.opts.cluster_name}": "owned",
            f"{tpl}/label/eks.amazonaws.com/nodegroup": ctx.pool_name,
            f"{tpl}/taint/{GPU_TAINT}": "true:NoSchedule",
            f"{tpl}/resources/nvidia.com/gpu": str(inst.gpus * ctx.mig_slices),
        },
        "iam": {"withAddonPolicies": {"autoScaler": True}},
    }
    multi = any(r.engine.nodes_per_replica > 1 for r in p.roles)
    if ctx.efa_interfaces and (multi or p.mode == "disaggregated"):  # P/D pods pull KV over EFA (NIXL)
        group["efaEnabled"] = True
        group["placement"] = {"groupName": f"{ctx.name}-pg"}
    return {
        "apiVersion": "eksctl.io/v1alpha5",
        "kind": "ClusterConfig",
        "metadata": {"name": ctx.opts.cluster_name, "region": inst.region},
        "managedNodeGroups": [group],
    }


def node_objects(ctx: Ctx) -> list[Obj]:
    """Kubernetes objects of the node tier (the eksctl file is written separately: it is not an "
    "API object)."""
    if ctx.mode == "managed-node-group":
        return []
    objs = [nodepool(ctx)]
    if ctx.plan.instance.capacity_type == "spot":
        objs.append(nodepool(ctx, fallback=True))
    if ctx.mode == "karpenter":
        objs.append(ec2nodeclass(ctx))
    elif needs_custom_auto_class(ctx):
        objs.append(auto_nodeclass(ctx))
    return objs
