"""Lint rules across objects: node provisioning mode vs add-ons, autoscaling pace, KV-aware routing needs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from eksinfer.deploy import cel, validate, vllm_flags
from eksinfer.deploy.lint.core import at, rule
from eksinfer.deploy.lint.manifests import GPU, REFUSED, UNREADABLE, Doc, Tree

Hit = tuple[Doc, str, str, str]
DEFAULT_NODE_STARTUP_S = 600  # GPU node boot + ~10 GB image + weights; typical of p5/g6e cold starts
AUTO = "eks.amazonaws.com"
KARPENTER_AWS = "karpenter.k8s.aws"


def _is_operator_values(obj: dict[str, Any]) -> bool:
    return "devicePlugin" in obj or ("driver" in obj and ("toolkit" in obj or "dcgmExporter" in obj))


def _pinned_off_auto(spec: dict[str, Any]) -> bool:
    """True when a pod spec can only land on non-Auto-Mode nodes (hybrid or an explicit NotIn auto)."""
    if (spec.get("nodeSelector") or {}).get("eks.amazonaws.com/compute-type") not in (None, "auto"):
        return True
    terms = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
        or {}
    ).get("nodeSelectorTerms") or []
    exprs = [
        e
        for t in terms
        for e in t.get("matchExpressions") or []
        if e.get("key") == "eks.amazonaws.com/compute-type"
    ]
    return bool(exprs) and all(
        (e.get("operator") == "NotIn" and "auto" in e.get("values", []))
        or (e.get("operator") == "In" and "auto" not in e.get("values", []))
        for e in exprs
    )


OPT_OUT = "nvidia.com/gpu.deploy.device-plugin"


def _pool_labels(pool: Doc) -> dict[str, Any]:
    tpl = ((pool.obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return tpl.get("labels") or {}


def _operator_settings(tree: Tree) -> Iterator[tuple[Doc, str, dict[str, Any]]]:
    """GPU Operator settings: Helm values files (prefix "") and ClusterPolicy objects (prefix "spec.")."""
    for doc in tree.docs:
        if not doc.is_api_object and _is_operator_values(doc.obj):
            yield doc, "", doc.obj
        elif doc.kind == "ClusterPolicy":
            yield doc, "spec.", doc.obj.get("spec") or {}


def _enabled(settings: dict[str, Any], key: str) -> bool:
    return (settings.get(key) or {}).get("enabled", True) is not False


@rule("device-plugin-on-auto-mode", "error", "a second NVIDIA device plugin on EKS Auto Mode")
def device_plugin_on_auto_mode(tree: Tree) -> Iterator[Hit]:
    if not tree.auto_mode:
        return
    why = (
        "Auto Mode nodes run their own NVIDIA device plugin; a second one fights over the kubelet socket and "
        "the node reports nvidia.com/gpu allocatable 0, so GPU pods never schedule"
    )
    unlabelled = [
        p
        for p in tree.nodepools
        if tree.nodeclass_group(p) == AUTO and str(_pool_labels(p).get(OPT_OUT)).lower() != "false"
    ]
    for doc, _, settings in _operator_settings(tree):
        if _enabled(settings, "devicePlugin"):
            for pool in unlabelled:
                yield (
                    pool,
                    f"spec.template.metadata.labels[{OPT_OUT}]",
                    why + f" (the GPU Operator in {doc.file} deploys its plugin on every GPU node not "
                    "opted out)",
                    f'add the label {OPT_OUT}: "false" to the NodePool template',
                )
    for unit in tree.units:
        if unit.doc.kind != "DaemonSet" or _pinned_off_auto(unit.spec):
            continue
        for i, c in unit.containers():
            if "device-plugin" in str(c.get("image", "")) and "nvidia" in str(c.get("image", "")):
                yield (
                    unit.doc,
                    at(unit, f"spec.containers[{i}].image"),
                    why,
                    "delete it, or pin it to hybrid nodes with nodeSelector "
                    "eks.amazonaws.com/compute-type: hybrid",
                )


@rule(
    "device-plugin-off-cluster-wide",
    "warning",
    "the GPU Operator's device plugin is turned off for every node",
)
def device_plugin_off_cluster_wide(tree: Tree) -> Iterator[Hit]:
    if tree.of_kind("ResourceClaimTemplate", "resource.k8s.io"):
        return  # with DRA the NVIDIA DRA driver, not a device plugin, advertises GPUs
    for doc, prefix, settings in _operator_settings(tree):
        if not _enabled(settings, "devicePlugin"):
            yield (
                doc,
                f"{prefix}devicePlugin.enabled",
                "every GPU node that does not bring its own plugin (a managed node group on the accelerated "
                "AL2023 AMI, a Karpenter AL2023 pool, a pool added later) then advertises no "
                "nvidia.com/gpu, and its GPU pods stay Pending",
                f"keep devicePlugin.enabled: true and label only the pools that bring their own plugin "
                f'(Auto Mode, Bottlerocket) with {OPT_OUT}: "false"',
            )


@rule("gpu-operator-nfd-off", "warning", "GPU Operator without Node Feature Discovery")
def gpu_operator_nfd_off(tree: Tree) -> Iterator[Hit]:
    for doc, prefix, settings in _operator_settings(tree):
        if prefix == "" and not _enabled(settings, "nfd"):
            yield (
                doc,
                "nfd.enabled",
                "the operator finds GPU nodes by NFD's PCI labels (feature.node.kubernetes.io/pci-10de."
                "present); without them no node is marked nvidia.com/gpu.present, so GFD and the DCGM "
                "exporter never run and GPU dashboards and alerts stay empty",
                "set nfd.enabled: true (or install Node Feature Discovery yourself before the operator)",
            )


@rule("dra-on-karpenter", "error", "Dynamic Resource Allocation on Karpenter or Auto Mode")
def dra_on_karpenter(tree: Tree) -> Iterator[Hit]:
    for unit in tree.units:
        if not unit.spec.get("resourceClaims"):
            continue
        selector = unit.spec.get("nodeSelector") or {}
        targets_karpenter = (
            "karpenter.sh/nodepool" in selector or selector.get("eks.amazonaws.com/compute-type") == "auto"
        )
        if targets_karpenter or tree.auto_mode or tree.karpenter:
            yield (
                unit.doc,
                at(unit, "spec.resourceClaims"),
                "Karpenter (and so Auto Mode) cannot simulate DRA claims: it never launches a node "
                "for the pod, "
                "which stays Pending",
                "run DRA workloads on a managed node group scaled by Cluster Autoscaler "
                "(--enable-dynamic-resource-allocation), or request nvidia.com/gpu instead",
            )


def _behavior(spec: dict[str, Any]) -> dict[str, Any]:
    return ((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get("behavior") or {}


@rule("keda-faster-than-nodes", "warning", "KEDA scales GPU replicas faster than nodes come up")
def keda_faster_than_nodes(tree: Tree) -> Iterator[Hit]:
    gpu_targets = {(u.doc.kind, u.doc.name): u for u in tree.units if u.gpus(tree.claim_gpus)}
    for doc in tree.of_kind("ScaledObject", "keda.sh"):
        spec = doc.obj.get("spec") or {}
        ref = spec.get("scaleTargetRef") or {}
        unit = gpu_targets.get((str(ref.get("kind", "Deployment")), str(ref.get("name"))))
        if unit is None:
            continue
        startup = int(float(unit.annotations.get("eksinfer.io/node-startup-s", DEFAULT_NODE_STARTUP_S)))
        window = int((_behavior(spec).get("scaleDown") or {}).get("stabilizationWindowSeconds", 300))
        if window < startup:
            yield (
                doc,
                "spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleDown.stabilizationWindowSeconds",
                f"replicas are removed after {window} s of low load but a GPU node and model take "
                f"~{startup} s to "
                "come back: a dip followed by a burst leaves users waiting a full cold start",
                f"set scaleDown.stabilizationWindowSeconds >= {startup} (eksinfer render uses 2x "
                "node start-up)",
            )
        up = _behavior(spec).get("scaleUp") or {}
        periods = [int(p.get("periodSeconds", 15)) for p in up.get("policies") or []]
        if not periods or min(periods) < startup // 2:
            yield (
                doc,
                "spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleUp.policies",
                f"the HPA may add replicas every {min(periods) if periods else 15} s, but new GPU nodes take "
                f"~{startup} s: the queue does not drain meanwhile, so it keeps adding and overshoots",
                f"add a scaleUp policy with periodSeconds >= {startup // 2} (render uses the node start-up)",
            )
        if int(spec.get("minReplicaCount", 0)) == 0 and int(spec.get("cooldownPeriod", 300)) < startup:
            yield (
                doc,
                "spec.cooldownPeriod",
                f"scale to zero after {spec.get('cooldownPeriod', 300)} s idle, but a cold start "
                f"takes ~{startup} s",
                f"set cooldownPeriod >= {startup} or minReplicaCount: 1",
            )


@rule("replicas-fight-keda", "warning", "a KEDA-scaled workload also sets spec.replicas")
def replicas_fight_keda(tree: Tree) -> Iterator[Hit]:
    targets = {
        (
            str((d.obj.get("spec") or {}).get("scaleTargetRef", {}).get("kind", "Deployment")),
            str((d.obj.get("spec") or {}).get("scaleTargetRef", {}).get("name")),
        )
        for d in tree.of_kind("ScaledObject", "keda.sh")
    }
    for doc in tree.docs:
        if (doc.kind, doc.name) in targets and "replicas" in (doc.obj.get("spec") or {}):
            yield (
                doc,
                "spec.replicas",
                "KEDA owns this workload's scale; every `kubectl apply` of the file resets it to this "
                "number, dropping replicas that serve traffic or adding GPUs nobody asked for",
                "delete spec.replicas and let the ScaledObject's minReplicaCount set the floor",
            )


def _engines(tree: Tree) -> Iterator[tuple[Any, int, list[str]]]:
    for unit in tree.units:
        found = unit.vllm()
        if found is not None and unit.lws_role != "worker":
            yield unit, found[0], vllm_flags.container_argv(found[1])


@rule("prefix-caching-off-behind-kv-router", "error", "prefix caching disabled behind a KV-aware router")
def prefix_caching_off(tree: Tree) -> Iterator[Hit]:
    if tree.kv_router is None:
        return
    for unit, i, argv in _engines(tree):
        value = vllm_flags.value(argv, "enable-prefix-caching")
        if vllm_flags.has(argv, "no-enable-prefix-caching") or (value or "").lower() in ("false", "0"):
            yield (
                unit.doc,
                at(unit, f"spec.containers[{i}].args"),
                "the router sends requests to the replica holding their prefix, but the engine "
                "recomputes every "
                "prompt: you pay for routing and get no cache hits",
                "remove --no-enable-prefix-caching (prefix caching is on by default in vLLM V1)",
            )


@rule("kv-events-missing", "warning", "KV-aware gateway but the engine publishes no KV events")
def kv_events_missing(tree: Tree) -> Iterator[Hit]:
    if tree.kv_router != "eksinfer":
        return
    for unit, i, argv in _engines(tree):
        if not vllm_flags.has(argv, "kv-events-config"):
            yield (
                unit.doc,
                at(unit, f"spec.containers[{i}].args"),
                "without KV events the gateway can only guess which replica holds a prefix "
                "(approximate index), "
                "and misses evictions",
                'add --kv-events-config \'{"enable_kv_cache_events":true,"publisher":"zmq","endpoint":"tcp://*:5557"}\'',
            )


@rule("kv-hash-not-reproducible", "warning", "engines hash KV blocks differently")
def kv_hash_not_reproducible(tree: Tree) -> Iterator[Hit]:
    if tree.kv_router is None:
        return
    seeds = set()
    for unit, i, argv in _engines(tree):
        c = (unit.spec.get("containers") or [])[i]
        seeds.add(
            next((str(e.get("value")) for e in c.get("env") or [] if e.get("name") == "PYTHONHASHSEED"), None)
        )
        if vllm_flags.value(argv, "prefix-caching-hash-algo") not in ("sha256_cbor", "xxhash_cbor"):
            yield (
                unit.doc,
                at(unit, f"spec.containers[{i}].args"),
                "the default sha256 pickles Python objects, so block hashes differ across "
                "Python/vLLM builds; "
                "routers and KV connectors that compare engine hashes stop matching",
                "add --prefix-caching-hash-algo sha256_cbor",
            )
        if None in seeds or len(seeds) > 1:
            yield (
                unit.doc,
                at(unit, f"spec.containers[{i}].env"),
                "the first block's parent hash is derived from PYTHONHASHSEED; unset (random per process) or "
                "different seeds give every replica different hashes for the same prefix",
                'set PYTHONHASHSEED to the same value (e.g. "0") on every engine and the gateway',
            )
            seeds.discard(None)


def _gpu_pool(pool: Doc) -> bool:
    text = str(pool.obj)
    return GPU in text or "instance-gpu" in text


@rule(
    "gpu-nodepool-consolidates-busy-nodes", "warning", "GPU NodePool may consolidate nodes that serve traffic"
)
def consolidates_busy(tree: Tree) -> Iterator[Hit]:
    for pool in tree.nodepools:
        disruption = (pool.obj.get("spec") or {}).get("disruption") or {}
        if (
            not _gpu_pool(pool)
            or disruption.get("consolidationPolicy", "WhenEmptyOrUnderutilized") == "WhenEmpty"
        ):
            continue
        blocked = any(
            str(b.get("nodes")) in ("0", "0%") and (not b.get("reasons") or "Underutilized" in b["reasons"])
            for b in disruption.get("budgets") or []
        )
        if not blocked:
            yield (
                pool,
                "spec.disruption.consolidationPolicy",
                "Underutilized consolidation evicts running engines to pack GPUs: each move is a "
                "multi-minute "
                "model reload and dropped requests",
                'use consolidationPolicy: WhenEmpty, or a budget {nodes: "0", reasons: [Underutilized]}',
            )


@rule("wrong-label-prefix", "error", "instance labels of the other provisioning mode")
def wrong_label_prefix(tree: Tree) -> Iterator[Hit]:
    for pool in tree.nodepools:
        group = tree.nodeclass_group(pool)
        reqs = (((pool.obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
            "requirements"
        ) or []
        wrong = (
            f"{AUTO}/instance-" if group == KARPENTER_AWS else f"{KARPENTER_AWS}/" if group == AUTO else None
        )
        for j, req in enumerate(reqs):
            if wrong and str(req.get("key", "")).startswith(wrong):
                yield (
                    pool,
                    f"spec.template.spec.requirements[{j}].key",
                    f"{req['key']} is the other mode's label: this NodePool's class ({group}) never "
                    "sets it, so no "
                    "instance type matches and nothing launches",
                    f"use the {'eks.amazonaws.com' if group == AUTO else 'karpenter.k8s.aws'}/ prefix",
                )
    only = (
        "auto"
        if tree.auto_mode and not tree.karpenter
        else "karpenter"
        if tree.karpenter and not tree.auto_mode
        else None
    )
    bad = {"auto": f"{KARPENTER_AWS}/", "karpenter": f"{AUTO}/instance-"}.get(only or "")
    for unit in tree.units:
        for key in unit.spec.get("nodeSelector") or {}:
            if bad and key.startswith(bad):
                yield (
                    unit.doc,
                    at(unit, f"spec.nodeSelector[{key}]"),
                    f"the cluster's NodePools are {only} pools, whose nodes never carry {key}; the "
                    "pod stays Pending",
                    f"select on {'eks.amazonaws.com' if only == 'auto' else 'karpenter.k8s.aws'}/... instead",
                )


@rule("crd-rule-violation", "error", "the API server's CEL validation would reject this object")
def crd_rule_violation(tree: Tree) -> Iterator[Hit]:
    for doc in tree.docs:
        if doc.is_api_object:
            for field, message in cel.check(doc.obj):
                yield (
                    doc,
                    field,
                    f"{message} (x-kubernetes-validations in the pinned CRD)",
                    "fix the field as the message says",
                )


@rule("schema-violation", "error", "the API server would reject this object's fields")
def schema_violation(tree: Tree) -> Iterator[Hit]:
    for doc in tree.docs:
        if not doc.is_api_object or doc.kind == "ClusterConfig":
            continue
        for problem in validate.schema_problems(doc.obj) or []:  # kinds without a known schema are skipped
            yield (
                doc,
                problem.field,
                f"{problem.message} (Kubernetes 1.34 schema / pinned CRD)",
                "fix or remove the field; kubectl apply would fail or silently drop it",
            )


@rule("mig-on-auto-mode", "error", "MIG requested on EKS Auto Mode")
def mig_on_auto_mode(tree: Tree) -> Iterator[Hit]:
    for pool in tree.nodepools:
        labels = (((pool.obj.get("spec") or {}).get("template") or {}).get("metadata") or {}).get(
            "labels"
        ) or {}
        if tree.nodeclass_group(pool) == AUTO and "nvidia.com/mig.config" in labels:
            yield (
                pool,
                "spec.template.metadata.labels[nvidia.com/mig.config]",
                "Auto Mode nodes have a read-only GPU configuration: MIG partitions are never "
                "created and the pods "
                "that request slices stay Pending",
                "use Karpenter or a managed node group with the GPU Operator's MIG manager",
            )
    if tree.auto_mode and not tree.karpenter:
        for unit in tree.units:
            for i, c in unit.containers():
                if any(
                    str(k).startswith("nvidia.com/mig-")
                    for k in ((c.get("resources") or {}).get("limits") or {})
                ):
                    yield (
                        unit.doc,
                        at(unit, f"spec.containers[{i}].resources.limits"),
                        "Auto Mode does not support MIG, so no node advertises nvidia.com/mig-* resources",
                        "request whole GPUs, or move the pool to Karpenter / a managed node group",
                    )


@rule("unreadable-manifest", "warning", "a file that is not valid YAML or JSON")
def unreadable_manifest(tree: Tree) -> Iterator[Hit]:
    for doc in tree.docs:
        if UNREADABLE in doc.obj:
            yield (
                doc,
                "",
                f"it does not parse ({doc.obj[UNREADABLE]}), so none of its objects were checked",
                "render templates first (helm template, kustomize build) and lint the output",
            )


@rule(
    "refused-manifest", "error", "a file too large, too deeply nested or with too many YAML aliases to read"
)
def refused_manifest(tree: Tree) -> Iterator[Hit]:
    for doc in tree.docs:
        if REFUSED in doc.obj:
            yield (
                doc,
                "",
                f"it was not read ({doc.obj[REFUSED]}); a file like this is a denial of service on whatever "
                "loads it (a YAML alias bomb expands to billions of values)",
                "remove the file, or expand its aliases and split it into ordinary manifests",
            )
