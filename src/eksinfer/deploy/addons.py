"""Cluster add-ons a plan needs: GPU Operator and Cluster Autoscaler Helm values, the NVIDIA DRA driver
values, and the device plugin for EKS Hybrid Nodes.

GPU Operator (NVIDIA/gpu-operator v26.7.0, `deployments/gpu-operator/values.yaml`): every mode here boots an
image with the NVIDIA driver and container toolkit already installed (Auto Mode, the Bottlerocket / AL2023
NVIDIA variants, the EKS accelerated AMI), so `driver` and `toolkit` are off. The device plugin stays on
cluster-wide and is turned off per pool by the node label `nvidia.com/gpu.deploy.device-plugin: "false"` where
the node brings its own (Auto Mode, where a second plugin makes allocatable 0; Bottlerocket NVIDIA) or where
DRA replaces it: a GPU node added later by someone else still gets a plugin. NFD, GFD and the DCGM exporter
are on: NFD's PCI labels are how the operator finds GPU nodes at all, so with NFD off no GFD labels and no
DCGM metrics. Each value is written with a comment that says why (`gpu_operator_comments`).
"""

from __future__ import annotations

import yaml

from eksinfer.deploy.context import GPU_TAINT, Ctx, Obj

GPU_OPERATOR_NAMESPACE = "gpu-operator"

# The operator adds `nvidia.com/gpu.deploy.<operand>=true` only where the label is missing, so a pool's own
# "false" opts its nodes out of that operand (GPU Operator docs, "per-node operand deployment").
DEVICE_PLUGIN_OPT_OUT = {"nvidia.com/gpu.deploy.device-plugin": "false"}


def device_plugin_opt_out(ctx: Ctx) -> bool:
    """True when this plan's GPU nodes must not get the operator's device plugin."""
    if ctx.plan.stack is not None and not ctx.plan.stack.gpu_operator:
        return False  # a migration phase without the operator: nothing to opt out of
    bottlerocket = ctx.mode == "karpenter" and not ctx.plan.nodes.mig_profile
    return ctx.mode == "auto-mode" or bottlerocket or ctx.plan.nodes.needs_dra


DCGM_CSV_NAME = "eksinfer-dcgm-metrics"
# Format: DCGM field, Prometheus type, help (dcgm-exporter etc/default-counters.csv).
DCGM_METRICS = (
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB)."),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
    ("DCGM_FI_PROF_SM_ACTIVE", "gauge", "Ratio of cycles an SM has at least 1 warp assigned."),
    ("DCGM_FI_PROF_SM_OCCUPANCY", "gauge", "Ratio of warps resident on an SM to its maximum."),
    ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge", "Ratio of cycles the tensor pipe is active."),
    ("DCGM_FI_PROF_DRAM_ACTIVE", "gauge", "Ratio of cycles the device memory interface is active."),
    ("DCGM_FI_PROF_NVLINK_TX_BYTES", "gauge", "NVLink transmitted bytes per second."),
    ("DCGM_FI_PROF_NVLINK_RX_BYTES", "gauge", "NVLink received bytes per second."),
)


def dcgm_csv() -> str:
    return "".join(f"{field}, {kind}, {help_}\n" for field, kind, help_ in DCGM_METRICS)


def gpu_operator_values(ctx: Ctx) -> Obj:
    auto = ctx.mode == "auto-mode"
    mig = bool(ctx.plan.nodes.mig_profile)
    tolerations: list[Obj] = [{"key": GPU_TAINT, "operator": "Exists", "effect": "NoSchedule"}]
    if auto:
        tolerations.append(
            {
                "key": "eks.amazonaws.com/compute-type",
                "operator": "Equal",
                "value": "auto",
                "effect": "NoSchedule",
            }
        )
    values: Obj = {
        "operator": {"defaultRuntime": "containerd"},
        "driver": {"enabled": False},
        "toolkit": {"enabled": False},
        "devicePlugin": {"enabled": True},
        "nfd": {"enabled": True},
        "node-feature-discovery": {"worker": {"tolerations": tolerations}},
        "gfd": {"enabled": True},
        "migManager": {"enabled": mig},
        "dcgmExporter": {
            "enabled": True,
            "serviceMonitor": {"enabled": False},
            "config": {"name": DCGM_CSV_NAME, "create": True, "data": dcgm_csv()},
        },
        "nodeStatusExporter": {"enabled": False},
        "gds": {"enabled": False},
        "gdrcopy": {"enabled": False},
        "vgpuManager": {"enabled": False},
        "vfioManager": {"enabled": False},
        "sandboxWorkloads": {"enabled": False},
        "daemonsets": {"tolerations": tolerations},
    }
    if mig:
        values["mig"] = {"strategy": "single"}
        values["migManager"]["config"] = {
            "name": mig_config_name(ctx),
            "create": False,  # the tree ships the ConfigMap (mig_parted_config): one format for any chart
            "default": "all-disabled",
        }
    return values


def mig_config_name(ctx: Ctx) -> str:
    return f"{ctx.name}-mig-parted"


def mig_parted_config(ctx: Ctx) -> Obj:
    """The MIG manager's layouts (NVIDIA/mig-parted config `version: v1`, key `config.yaml`): `all-disabled`
    and the plan's `all-<profile>`, every GPU cut into that profile with its count per GPU written out. The
    operator's default ConfigMap names profiles by GPU family and may not know a newer GPU's (B300), and a
    count must follow memory as well as compute: B300's `1g.67gb` fits 4 times, its `1g.34gb` 7 times."""
    label = ctx.plan.nodes.mig_profile or ""
    layouts = {
        "all-disabled": [{"devices": "all", "mig-enabled": False}],
        label: [
            {
                "devices": "all",
                "mig-enabled": True,
                "mig-devices": {label.removeprefix("all-"): ctx.mig_slices},
            }
        ],
    }
    text = yaml.safe_dump({"version": "v1", "mig-configs": layouts}, sort_keys=False)
    meta = ctx.meta(mig_config_name(ctx), "gpu-operator", namespaced=False)
    meta["namespace"] = GPU_OPERATOR_NAMESPACE
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"config.yaml": text}}


def gpu_operator_comments(ctx: Ctx) -> dict[str, str]:
    """Why each top-level value is what it is, written above it in helm/gpu-operator-values.yaml."""
    opt_out = device_plugin_opt_out(ctx)
    mng = ctx.mode == "managed-node-group"
    where = "the node group (cluster/eksctl-nodegroup.yaml)" if mng else "the NodePool"
    plugin = (
        f"On cluster-wide; {where} labels its nodes nvidia.com/gpu.deploy.device-plugin=false because "
        + (
            "Auto Mode runs its own plugin (a second one makes nvidia.com/gpu allocatable 0)"
            if ctx.mode == "auto-mode"
            else "the NVIDIA DRA driver advertises the GPUs instead"
            if ctx.plan.nodes.needs_dra
            else "Bottlerocket NVIDIA runs its own plugin"
        )
        + ". Other GPU nodes keep the operator's plugin."
        if opt_out
        else "On: nothing else on these nodes advertises nvidia.com/gpu."
    )
    return {
        "operator": "The node images run containerd.",
        "driver": "Off: the node image ships the NVIDIA driver (Auto Mode, Bottlerocket/AL2023 NVIDIA, "
        "EKS accelerated AMI).",
        "toolkit": "Off: the NVIDIA container runtime is part of the same image.",
        "devicePlugin": plugin,
        "nfd": "On: NFD's PCI labels (pci-10de) are how the operator finds GPU nodes; without them GFD and "
        "the DCGM exporter never start.",
        "node-feature-discovery": "NFD workers must run on the tainted GPU nodes to label them.",
        "gfd": "On: GPU Feature Discovery labels nodes with GPU product, memory and MIG layout.",
        "migManager": "On only when the plan partitions GPUs with MIG"
        + (
            f", reading the layouts from ConfigMap {mig_config_name(ctx)} (nodes/, applied before this "
            f"chart): {ctx.plan.nodes.mig_profile} = {ctx.mig_slices} instances per GPU."
            if ctx.plan.nodes.mig_profile
            else "."
        ),
        "dcgmExporter": "On: GPU utilisation, memory and SM activity for the dashboard and alerts; scraped "
        "by the tree's own ServiceMonitor (so the chart's is off), with the metric list in the CSV below.",
        "nodeStatusExporter": "Off: not needed to serve.",
        "gds": "Off: weights load over the network (EFS/S3), not GPUDirect Storage.",
        "gdrcopy": "Off: not used by vLLM's NCCL or NIXL paths here.",
        "vgpuManager": "Off: bare GPUs, no vGPU.",
        "vfioManager": "Off: no GPU passthrough to VMs.",
        "sandboxWorkloads": "Off: no Kata/VM workloads.",
        "daemonsets": "Operand DaemonSets tolerate the GPU taint (and Auto Mode's compute-type taint).",
        "mig": "single: every MIG slice is advertised as nvidia.com/gpu.",
    }


def dra_driver_values(ctx: Ctx) -> Obj:
    """nvidia/nvidia-dra-driver-gpu chart values: GPUs as DRA devices (device class gpu.nvidia.com)."""
    return {
        "nvidiaDriverRoot": "/",
        "resources": {"gpus": {"enabled": True}, "computeDomains": {"enabled": False}},
        "kubeletPlugin": {
            "tolerations": [{"key": GPU_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
            "nodeSelector": {"eks.amazonaws.com/nodegroup": ctx.pool_name},
        },
    }


def cluster_autoscaler_values(ctx: Ctx) -> Obj:
    """kubernetes/autoscaler chart values: auto-discovery by tag; slow scale-down so GPU nodes are not
    dropped and re-bought within one node start-up; DRA-aware simulation when the plan uses DRA."""
    unneeded = f"{max(10, ctx.node_startup_s() * 2 // 60)}m"
    extra: Obj = {
        "expander": "least-waste",
        "balance-similar-node-groups": True,
        "skip-nodes-with-local-storage": False,
        "scale-down-unneeded-time": unneeded,
        "scale-down-delay-after-add": unneeded,
        "max-node-provision-time": f"{max(15, ctx.node_startup_s() * 3 // 60)}m",
    }
    if ctx.plan.nodes.needs_dra:
        extra["enable-dynamic-resource-allocation"] = True
    return {
        "autoDiscovery": {"clusterName": ctx.opts.cluster_name},
        "awsRegion": ctx.plan.instance.region,
        "extraArgs": extra,
        "rbac": {"serviceAccount": {"name": "cluster-autoscaler"}},
    }


def hybrid_device_plugin(ctx: Ctx) -> Obj:
    """NVIDIA device plugin pinned to hybrid nodes only, so it never meets the cloud nodes' own plugin."""
    labels = {
        "app.kubernetes.io/name": "nvidia-device-plugin-hybrid",
        "app.kubernetes.io/part-of": "eksinfer",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "nvidia-device-plugin-hybrid", "namespace": "kube-system", "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "nvidia-device-plugin-hybrid"}},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"eks.amazonaws.com/compute-type": "hybrid"},
                    "priorityClassName": "system-node-critical",
                    "tolerations": [{"key": GPU_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "nvidia-device-plugin",
                            "image": ctx.opts.device_plugin_image,
                            "env": [{"name": "FAIL_ON_INIT_ERROR", "value": "false"}],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "device-plugin", "mountPath": "/var/lib/kubelet/device-plugins"}
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "device-plugin", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}}
                    ],
                },
            },
        },
    }
