"""The CEL rules of the pinned CRDs that matter for what we render, re-implemented in Python.

JSON-schema validation ignores `x-kubernetes-validations`; an API server does not. These checks mirror the
rule text in the vendored schemas (schemas/crds/*.json) so a manifest we pass is one the server accepts:

    NodePool       requirement operators (In needs values; Gt/Lt/Gte/Lte one non-negative integer;
                   minValues <= len(values)); restricted keys in requirements and template labels
                   (kubernetes.io/hostname, karpenter.sh/* except capacity-type, karpenter.k8s.aws/* outside
                   the well-known list, read from the CRD's own rule); budgets: schedule iff duration
    EC2NodeClass   exactly one of role / instanceProfile; alias format family@version, family known, an alias
                   alone in amiSelectorTerms; amiFamily when no alias; selector terms non-empty; EBS needs
                   snapshotID or volumeSize; restricted tags
    ScaledObject   minReplicaCount <= maxReplicaCount (max defaults to 100)
    InferencePool  unique targetPorts; endpointPickerRef.port when its kind is Service
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

from eksinfer.deploy.schemas import crd_schema

FieldProblem = tuple[str, str]  # (field path, message)
Obj = Mapping[str, Any]

ALIAS_FAMILIES = ("al2", "al2023", "bottlerocket", "windows2019", "windows2022", "windows2025")
RESTRICTED_TAGS = ("eks:eks-cluster-name", "karpenter.sh/nodepool", "karpenter.sh/nodeclaim")


@cache
def karpenter_aws_keys() -> frozenset[str]:
    """Well-known `karpenter.k8s.aws/*` keys, parsed from the NodePool CRD's requirement-key CEL rule."""
    schema = crd_schema("karpenter.sh/v1", "NodePool")
    assert schema is not None
    key = schema["properties"]["spec"]["properties"]["template"]["properties"]["spec"]["properties"]
    rules = key["requirements"]["items"]["properties"]["key"]["x-kubernetes-validations"]
    for rule in rules:
        if "karpenter.k8s.aws" in rule["rule"]:
            return frozenset(re.findall(r'"(karpenter\.k8s\.aws/[^"]+)"', rule["rule"]))
    raise AssertionError("NodePool CRD has no karpenter.k8s.aws key rule")


def label_key_problem(key: str) -> str | None:
    """Why Karpenter refuses this key in a requirement or template label, or None."""
    domain = key.split("/", 1)[0] if "/" in key else ""
    if key in ("kubernetes.io/hostname", "karpenter.sh/nodepool"):
        return f'label "{key}" is restricted'
    if domain.endswith("karpenter.sh") and key != "karpenter.sh/capacity-type":
        return 'label domain "karpenter.sh" is restricted'
    if domain.endswith("karpenter.k8s.aws") and key not in karpenter_aws_keys():
        return f'label domain "karpenter.k8s.aws" is restricted ({key} is not a well-known key)'
    return None


def _requirement_problems(reqs: Sequence[Mapping[str, Any]], at: str) -> list[FieldProblem]:
    out: list[FieldProblem] = []
    for i, req in enumerate(reqs):
        path, op, values = f"{at}[{i}]", req.get("operator"), list(req.get("values") or [])
        if (why := label_key_problem(str(req.get("key", "")))) is not None:
            out.append((f"{path}.key", why))
        if op == "In" and not values:
            out.append((f"{path}.values", "requirements with operator 'In' must have a value defined"))
        if op in ("Gt", "Lt", "Gte", "Lte") and (
            len(values) != 1 or not re.fullmatch(r"\d+", str(values[0]))
        ):
            out.append((f"{path}.values", f"operator {op!r} must have a single non-negative integer value"))
        if op == "In" and "minValues" in req and len(values) < int(req["minValues"]):
            out.append((f"{path}.minValues", "minValues exceeds the number of values"))
    return out


def nodepool(obj: Obj) -> list[FieldProblem]:
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    out = _requirement_problems(
        (template.get("spec") or {}).get("requirements") or [], "spec.template.spec.requirements"
    )
    for key in (template.get("metadata") or {}).get("labels") or {}:
        if (why := label_key_problem(key)) is not None and key != "karpenter.sh/nodepool":
            out.append((f"spec.template.metadata.labels[{key}]", why))
    for i, budget in enumerate((spec.get("disruption") or {}).get("budgets") or []):
        if ("schedule" in budget) != ("duration" in budget):
            out.append((f"spec.disruption.budgets[{i}]", "'schedule' must be set with 'duration'"))
    return out


def _ami_problems(spec: Mapping[str, Any]) -> list[FieldProblem]:
    out: list[FieldProblem] = []
    terms = spec.get("amiSelectorTerms") or []
    aliases = [t["alias"] for t in terms if "alias" in t]
    for alias in aliases:
        family = str(alias).split("@", 1)[0]
        if not re.fullmatch(r"[a-zA-Z0-9]+@.+", str(alias)) or family not in ALIAS_FAMILIES:
            out.append(
                ("spec.amiSelectorTerms.alias", f"alias {alias!r} is not family@version with a known family")
            )
    if aliases and len(terms) != 1:
        out.append(("spec.amiSelectorTerms", "an alias term cannot be combined with other terms"))
    if not aliases and "amiFamily" not in spec:
        out.append(("spec.amiFamily", "amiFamily is required when amiSelectorTerms has no alias"))
    return out


def ec2nodeclass(obj: Obj) -> list[FieldProblem]:
    spec = obj.get("spec") or {}
    out = _ami_problems(spec)
    if ("role" in spec) == ("instanceProfile" in spec):
        out.append(("spec.role", "must specify exactly one of ['role', 'instanceProfile']"))
    for field in ("subnetSelectorTerms", "securityGroupSelectorTerms"):
        if not spec.get(field):
            out.append((f"spec.{field}", "expected at least one term"))
    for i, bdm in enumerate(spec.get("blockDeviceMappings") or []):
        ebs = bdm.get("ebs") or {}
        if ebs and "snapshotID" not in ebs and "volumeSize" not in ebs:
            out.append((f"spec.blockDeviceMappings[{i}].ebs", "snapshotID or volumeSize must be defined"))
    for tag in spec.get("tags") or {}:
        if tag in RESTRICTED_TAGS or tag.startswith("kubernetes.io/cluster"):
            out.append((f"spec.tags[{tag}]", f"tag {tag!r} is restricted"))
    return out


def scaledobject(obj: Obj) -> list[FieldProblem]:
    spec = obj.get("spec") or {}
    low, high = spec.get("minReplicaCount"), spec.get("maxReplicaCount", 100)
    if low is not None and int(low) > int(high):
        return [("spec.minReplicaCount", "minReplicaCount must be less than or equal to maxReplicaCount")]
    return []


def inferencepool(obj: Obj) -> list[FieldProblem]:
    spec = obj.get("spec") or {}
    out: list[FieldProblem] = []
    ports = [p.get("number") for p in spec.get("targetPorts") or []]
    if len(ports) != len(set(ports)):
        out.append(("spec.targetPorts", "port number must be unique"))
    ref = spec.get("endpointPickerRef")
    if ref and ref.get("kind", "Service") == "Service" and "port" not in ref:
        out.append(("spec.endpointPickerRef.port", "port is required when kind is 'Service'"))
    return out


RULES: dict[tuple[str, str], Callable[[Obj], list[FieldProblem]]] = {
    ("karpenter.sh/v1", "NodePool"): nodepool,
    ("karpenter.k8s.aws/v1", "EC2NodeClass"): ec2nodeclass,
    ("keda.sh/v1alpha1", "ScaledObject"): scaledobject,
    ("inference.networking.k8s.io/v1", "InferencePool"): inferencepool,
}


def check(obj: Obj) -> list[FieldProblem]:
    """The CEL problems of one object (empty for kinds without re-implemented rules)."""
    rule = RULES.get((str(obj.get("apiVersion")), str(obj.get("kind"))))
    return rule(obj) if rule else []
