"""What a rendered tree needs from the cluster, compared with what the cluster has. Pure: a list of manifest
documents and `ClusterFacts` in, findings out; each names what is missing, why it matters, and the command
that fixes it.

    crd-missing / crd-version     every custom kind the tree applies, at the version it uses
    storage-class-missing         the model cache's StorageClass
    gpu-operator-missing          the GPU Operator of the Helm values (error where it is the device plugin)
    efa-plugin-missing            the EFA device plugin, when pods request vpc.amazonaws.com/efa off Auto Mode
    device-plugin-on-auto-mode    an unpinned NVIDIA device plugin DaemonSet in an Auto Mode tree
    prometheus-unreachable        the in-cluster Service behind KEDA's Prometheus address
    cluster-name-mismatch         the cluster the subnet / security-group selectors name
    hybrid-nodes-missing          nodes for the on-prem (EKS Hybrid Nodes) pool
    exposure-missing              the IngressClass an ALB Ingress names, the Gateway an HTTPRoute attaches to
    kubernetes-version            preStop sleep actions (1.30), DRA's resource.k8s.io/v1 (1.34)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from eksinfer.deploy.doctor.cluster import ClusterFacts
from eksinfer.deploy.lint.manifests import Doc, Tree

Obj = dict[str, Any]
BUILT_IN_GROUPS = {
    "",
    "apps",
    "batch",
    "policy",
    "autoscaling",
    "rbac.authorization.k8s.io",
    "storage.k8s.io",
    "resource.k8s.io",
    "networking.k8s.io",
    "scheduling.k8s.io",
    "node.k8s.io",
    "discovery.k8s.io",
    "coordination.k8s.io",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "certificates.k8s.io",
}
NOT_APPLIED = {"eksctl.io", "kustomize.config.k8s.io"}  # files in the tree that are not API objects

LWS_INSTALL = (
    "helm install lws oci://registry.k8s.io/lws/charts/lws --version 0.10.0 -n lws-system --create-namespace"
)
# group -> (what provides it, the command that installs it)
PROVIDERS = {
    "leaderworkerset.x-k8s.io": ("LeaderWorkerSet", LWS_INSTALL),
    "disaggregatedset.x-k8s.io": ("LeaderWorkerSet >= 0.9 (bundles DisaggregatedSet)", LWS_INSTALL),
    "keda.sh": ("KEDA", "helm install keda kedacore/keda -n keda --create-namespace"),
    "karpenter.sh": (
        "Karpenter (or EKS Auto Mode)",
        "helm install karpenter oci://public.ecr.aws/karpenter/karpenter -n kube-system "
        "--set settings.clusterName=CLUSTER (or enable Auto Mode: aws eks update-cluster-config --name "
        "CLUSTER --compute-config enabled=true --kubernetes-network-config "
        "elasticLoadBalancing={enabled=true} --storage-config blockStorage={enabled=true})",
    ),
    "karpenter.k8s.aws": (
        "Karpenter's AWS provider",
        "helm install karpenter oci://public.ecr.aws/karpenter/karpenter -n kube-system "
        "--set settings.clusterName=CLUSTER",
    ),
    "eks.amazonaws.com": (
        "EKS Auto Mode",
        "aws eks update-cluster-config --name CLUSTER --compute-config enabled=true "
        "--kubernetes-network-config elasticLoadBalancing={enabled=true} --storage-config "
        "blockStorage={enabled=true}",
    ),
    "monitoring.coreos.com": (
        "the Prometheus Operator",
        "helm install kube-prometheus-stack prometheus-community/kube-prometheus-stack -n monitoring "
        "--create-namespace",
    ),
    "inference.networking.k8s.io": (
        "the Gateway API Inference Extension CRDs",
        "kubectl apply -f https://github.com/kubernetes-sigs/gateway-api-inference-extension/releases/"
        "download/v1.0.0/manifests.yaml",
    ),
    "gateway.networking.k8s.io": (
        "the Gateway API CRDs and a Gateway controller",
        "kubectl apply -f https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.3.0/"
        "standard-install.yaml",
    ),
}
GPU_OPERATOR = (
    "helm install gpu-operator nvidia/gpu-operator -n gpu-operator --create-namespace "
    "-f helm/gpu-operator-values.yaml"
)


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    severity: str  # error | warning
    subject: str  # what is missing or wrong
    why: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _api_objects(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d.is_api_object and d.api_group not in NOT_APPLIED]


def _crds(docs: list[Doc], facts: ClusterFacts) -> Iterator[Finding]:
    seen: set[tuple[str, str, str]] = set()
    for doc in _api_objects(docs):
        group, _, version = str(doc.obj["apiVersion"]).rpartition("/")
        key = (group, doc.kind, version)
        if group in BUILT_IN_GROUPS or key in seen:
            continue
        seen.add(key)
        provider, command = PROVIDERS.get(group, (f"the {group} CRDs", f"install the {group} CRDs"))
        command = command.replace("CLUSTER", facts.cluster_name or "CLUSTER")
        served = facts.crds.get((group, doc.kind))
        if served is None:
            yield Finding(
                "crd-missing",
                "error",
                f"{doc.kind} ({group}/{version}), used by {doc.file}",
                f"the API server does not know the kind: `kubectl apply -k` fails on it, and {provider} is "
                "what acts on it",
                command,
            )
        elif version not in served:
            yield Finding(
                "crd-version",
                "error",
                f"{doc.kind} {group}/{version} (the cluster serves {', '.join(served) or 'none'})",
                "the installed CRDs are older or newer than the tree: the apply is rejected",
                f"upgrade {provider}: {command}",
            )


def _storage(docs: list[Doc], facts: ClusterFacts) -> Iterator[Finding]:
    for doc in _api_objects(docs):
        if doc.kind != "PersistentVolumeClaim":
            continue
        name = (doc.obj.get("spec") or {}).get("storageClassName")
        if name and name not in facts.storage_classes:
            yield Finding(
                "storage-class-missing",
                "error",
                f"StorageClass {name!r} for {doc.oid}",
                "the model cache claim stays Pending, and so does every engine pod that mounts it",
                "aws eks create-addon --cluster-name CLUSTER --addon-name aws-efs-csi-driver, then a "
                f"StorageClass {name!r} with provisioner efs.csi.aws.com, provisioningMode efs-ap and your "
                "fileSystemId (or render --model-s3 s3://... to stream weights instead)".replace(
                    "CLUSTER", facts.cluster_name or "CLUSTER"
                ),
            )


def _images(ds: Obj) -> list[str]:
    spec = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
    return [str(c.get("image", "")) for c in spec.get("containers") or []]


def _pool_opted_out(docs: list[Doc]) -> bool:
    """Every GPU pool in the tree (NodePools, eksctl node groups) labels its nodes out of the operator's
    device plugin: their own plugin, or the DRA driver, advertises the GPUs."""
    labels = [
        ((d.obj["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
        for d in docs
        if d.kind == "NodePool"
    ]
    labels += [
        group.get("labels") or {}
        for d in docs
        if d.kind == "ClusterConfig"
        for group in d.obj.get("managedNodeGroups") or []
    ]
    return bool(labels) and all(
        str(lb.get("nvidia.com/gpu.deploy.device-plugin")).lower() == "false" for lb in labels
    )


def _gpu(docs: list[Doc], facts: ClusterFacts) -> Iterator[Finding]:
    wants_operator = any(not d.is_api_object and "devicePlugin" in d.obj for d in docs)
    has_operator = ("nvidia.com", "ClusterPolicy") in facts.crds
    if wants_operator and not has_operator:
        needed = not _pool_opted_out(docs)
        yield Finding(
            "gpu-operator-missing",
            "error" if needed else "warning",
            "the NVIDIA GPU Operator (no clusterpolicies.nvidia.com CRD)",
            "it is these nodes' device plugin: without it no node advertises nvidia.com/gpu"
            if needed
            else "without it no DCGM exporter or GPU feature discovery runs: the GPU panels and alerts stay "
            "empty (the nodes' own plugin still serves GPUs)",
            GPU_OPERATOR,
        )
    auto = Tree(docs).auto_mode
    if auto:
        for ds in facts.daemonsets:
            spec = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
            pinned = (spec.get("nodeSelector") or {}).get("eks.amazonaws.com/compute-type") == "hybrid"
            owned = any(r.get("kind") == "ClusterPolicy" for r in ds["metadata"].get("ownerReferences") or [])
            if owned or pinned:
                continue  # the operator's own DaemonSet honours the pools' opt-out label
            if any("nvidia" in i and "device-plugin" in i for i in _images(ds)):
                meta = ds["metadata"]
                yield Finding(
                    "device-plugin-on-auto-mode",
                    "error",
                    f"DaemonSet {meta.get('namespace')}/{meta.get('name')}",
                    "Auto Mode nodes run their own NVIDIA device plugin; a second one makes nvidia.com/gpu "
                    "allocatable 0",
                    f"kubectl -n {meta.get('namespace')} delete daemonset {meta.get('name')} (or pin it to "
                    "eks.amazonaws.com/compute-type: hybrid)",
                )
    efa = "vpc.amazonaws.com/efa" in json.dumps([d.obj for d in _api_objects(docs)])
    has_efa = any(
        "efa" in str(ds["metadata"].get("name", "")) or any("efa" in i for i in _images(ds))
        for ds in facts.daemonsets
    )
    if efa and not auto and not has_efa:
        yield Finding(
            "efa-plugin-missing",
            "error",
            "the AWS EFA device plugin",
            "multi-node engine pods request vpc.amazonaws.com/efa; no node advertises it: they stay Pending",
            "helm install aws-efa-k8s-device-plugin eks/aws-efa-k8s-device-plugin -n kube-system "
            "--set tolerations[0].operator=Exists",
        )


def prometheus_addresses(docs: list[Doc]) -> set[str]:
    out = set()
    for doc in _api_objects(docs):
        if doc.kind == "ScaledObject":
            for trigger in (doc.obj.get("spec") or {}).get("triggers") or []:
                if trigger.get("type") == "prometheus":
                    out.add(str((trigger.get("metadata") or {}).get("serverAddress", "")))
    return out


def service_of(url: str) -> tuple[str, str, int] | None:
    """(namespace, service, port) for an in-cluster address like http://NAME.NS.svc:9090; None otherwise."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    labels = host.split(".")
    if len(labels) >= 3 and labels[2] == "svc":
        return labels[1], labels[0], parts.port or (443 if parts.scheme == "https" else 80)
    return None


def namespaces_to_read(docs: list[Doc]) -> set[str]:
    return {found[0] for url in prometheus_addresses(docs) if (found := service_of(url))}


def _prometheus(docs: list[Doc], facts: ClusterFacts) -> Iterator[Finding]:
    for url in sorted(prometheus_addresses(docs)):
        found = service_of(url)
        if found is None:
            continue  # outside the cluster (Amazon Managed Prometheus, ...): nothing doctor can look up
        ns, name, port = found
        ports = facts.services.get((ns, name))
        if ports is None or port not in ports:
            what = f"Service {ns}/{name}" + ("" if ports is None else f" port {port} (has {ports})")
            yield Finding(
                "prometheus-unreachable",
                "error",
                f"{what}, KEDA's Prometheus address {url}",
                "KEDA cannot read the engines' metrics: the ScaledObjects stay at their floor (or fall back) "
                "and never scale for load",
                "render again with --prometheus-url set to your Prometheus (e.g. http://prometheus-operated."
                "monitoring.svc:9090 from kube-prometheus-stack), or install it there",
            )


def _cluster_name(docs: list[Doc], facts: ClusterFacts) -> Iterator[Finding]:
    if facts.cluster_name is None:
        return
    for doc in _api_objects(docs):
        if doc.kind not in ("EC2NodeClass", "NodeClass"):
            continue
        spec = doc.obj.get("spec") or {}
        for field in ("subnetSelectorTerms", "securityGroupSelectorTerms"):
            for term in spec.get(field) or []:
                tagged = (term.get("tags") or {}).get("karpenter.sh/discovery")
                if tagged is not None and tagged != facts.cluster_name:
                    yield Finding(
                        "cluster-name-mismatch",
                        "error",
                        f"{doc.oid} {field} select karpenter.sh/discovery={tagged}",
                        f"this cluster is {facts.cluster_name!r}: no subnet or security group carries that "
                        "tag, so no GPU node can launch",
                        f"eksinfer render PLAN.json -o DIR --cluster {facts.cluster_name} (and tag the "
                        f"subnets and node security group karpenter.sh/discovery={facts.cluster_name})",
                    )
                    break


def _hybrid(docs: list[Doc], facts: ClusterFacts) -> Iterator[Finding]:
    wants = any(
        (((d.obj.get("spec") or {}).get("template") or {}).get("spec") or {})
        .get("nodeSelector", {})
        .get("eks.amazonaws.com/compute-type")
        == "hybrid"
        for d in _api_objects(docs)
        if d.kind == "Deployment"
    )
    if wants and not any(lb.get("eks.amazonaws.com/compute-type") == "hybrid" for lb in facts.node_labels):
        yield Finding(
            "hybrid-nodes-missing",
            "warning",
            "nodes labelled eks.amazonaws.com/compute-type=hybrid",
            "the on-prem engine pool selects EKS Hybrid Nodes; none has joined, so those pods stay Pending",
            "join the on-prem hosts with nodeadm (EKS Hybrid Nodes) or render without the on-prem pool",
        )


def gateway_refs(docs: list[Doc]) -> set[tuple[str, str]]:
    """(namespace, name) of every Gateway the tree's HTTPRoutes attach to."""
    out = set()
    for doc in _api_objects(docs):
        if doc.kind == "HTTPRoute":
            home = str((doc.obj.get("metadata") or {}).get("namespace", "default"))
            for ref in (doc.obj.get("spec") or {}).get("parentRefs") or []:
                if ref.get("kind", "Gateway") == "Gateway":
                    out.add((str(ref.get("namespace", home)), str(ref.get("name"))))
    return out


def _exposure(docs: list[Doc], facts: ClusterFacts) -> Iterator[Finding]:
    for doc in _api_objects(docs):
        cls = (doc.obj.get("spec") or {}).get("ingressClassName")
        if doc.kind == "Ingress" and cls and cls not in facts.ingress_classes:
            yield Finding(
                "exposure-missing",
                "error",
                f"IngressClass {cls!r} for {doc.oid}",
                "no controller claims the Ingress: no load balancer is created and clients cannot connect",
                "helm install aws-load-balancer-controller eks/aws-load-balancer-controller -n kube-system "
                f"--set clusterName={facts.cluster_name or 'CLUSTER'} (on Auto Mode: an IngressClass "
                f"{cls!r} with spec.controller eks.amazonaws.com/alb)",
            )
    for ns, name in sorted(gateway_refs(docs) - facts.gateways):
        yield Finding(
            "exposure-missing",
            "error",
            f"Gateway {ns}/{name}",
            "the HTTPRoute attaches to it; without it the route is never accepted and nothing is exposed",
            "create the Gateway with an HTTPS listener (certificateRefs) that allows routes from the tree's "
            "namespace, or render with --gateway-ref naming an existing one",
        )


def _uses_sleep_hook(docs: list[Doc]) -> bool:
    return '"sleep": {"seconds"' in json.dumps([d.obj for d in _api_objects(docs)])


def _version(docs: list[Doc], facts: ClusterFacts) -> Iterator[Finding]:
    if facts.version is None:
        return
    have = f"{facts.version[0]}.{facts.version[1]}"
    needs = []
    if any(d.obj.get("apiVersion") == "resource.k8s.io/v1" for d in _api_objects(docs)):
        needs.append(((1, 34), "resource.k8s.io/v1 (Dynamic Resource Allocation, GA in 1.34)"))
    if _uses_sleep_hook(docs):
        needs.append(((1, 30), "preStop sleep actions (PodLifecycleSleepAction, on by default from 1.30)"))
    for minimum, what in needs:
        if facts.version < minimum:
            yield Finding(
                "kubernetes-version",
                "error",
                f"Kubernetes {have}; the tree uses {what}",
                "the API server rejects the objects (or drops the hook), so the apply fails or pods stop "
                "without draining",
                f"aws eks update-cluster-version --name {facts.cluster_name or 'CLUSTER'} "
                f"--kubernetes-version {minimum[0]}.{minimum[1]} (one minor version at a time)",
            )


CHECKS = (_version, _crds, _storage, _gpu, _prometheus, _cluster_name, _hybrid, _exposure)


def diagnose(docs: list[Doc], facts: ClusterFacts) -> list[Finding]:
    out = [f for check in CHECKS for f in check(docs, facts)]
    order = {"error": 0, "warning": 1}
    return sorted(out, key=lambda f: (order[f.severity], f.check, f.subject))
