"""Offline validation: vendored CRD schemas (strict), the re-implemented CEL rules, core kinds, metadata."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from eksinfer.deploy.schemas import CRD_DIR, crd_schema, known_kinds
from eksinfer.deploy.schemas.vendor import strip_descriptions
from eksinfer.deploy.validate import validate_object

Obj = dict[str, Any]

NODEPOOL: Obj = {
    "apiVersion": "karpenter.sh/v1",
    "kind": "NodePool",
    "metadata": {"name": "gpu"},
    "spec": {
        "template": {
            "spec": {
                "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "gpu"},
                "requirements": [
                    {"key": "karpenter.k8s.aws/instance-gpu-count", "operator": "Gt", "values": ["0"]}
                ],
            }
        },
        "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "5m"},
    },
}
NODECLASS: Obj = {
    "apiVersion": "karpenter.k8s.aws/v1",
    "kind": "EC2NodeClass",
    "metadata": {"name": "gpu"},
    "spec": {
        "role": "KarpenterNodeRole-x",
        "amiSelectorTerms": [{"alias": "bottlerocket@latest"}],
        "subnetSelectorTerms": [{"tags": {"karpenter.sh/discovery": "x"}}],
        "securityGroupSelectorTerms": [{"tags": {"karpenter.sh/discovery": "x"}}],
    },
}
SCALEDOBJECT: Obj = {
    "apiVersion": "keda.sh/v1alpha1",
    "kind": "ScaledObject",
    "metadata": {"name": "s"},
    "spec": {
        "scaleTargetRef": {"name": "d"},
        "minReplicaCount": 1,
        "maxReplicaCount": 3,
        "triggers": [{"type": "prometheus", "metadata": {"query": "q", "threshold": "1"}}],
    },
}
POOL: Obj = {
    "apiVersion": "inference.networking.k8s.io/v1",
    "kind": "InferencePool",
    "metadata": {"name": "p"},
    "spec": {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 8000}]},
}


def _with(obj: Obj, path: str, value: Any) -> Obj:
    out = copy.deepcopy(obj)
    node = out
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    last = keys[-1]
    if value is None:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return out


def _msgs(obj: Obj) -> list[str]:
    return [f"{p.field}: {p.message}" for p in validate_object(obj)]


@pytest.mark.parametrize("obj", [NODEPOOL, NODECLASS, SCALEDOBJECT, POOL])
def test_valid_objects_pass(obj: Obj) -> None:
    assert _msgs(obj) == []


@pytest.mark.parametrize(
    ("obj", "path", "value", "expect"),
    [
        # JSON schema (strict: misspelt fields fail instead of being pruned)
        (NODEPOOL, "spec.disruption.consolidationPolicy", "WhenIdle", "is not one of"),
        (NODEPOOL, "spec.template.spec.requirements.0.operator", "Within", "is not one of"),
        (NODEPOOL, "spec.template.spec.taint", [], "'taint' was unexpected"),
        # NodePool CEL
        (
            NODEPOOL,
            "spec.template.spec.requirements.0",
            {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": []},
            "operator 'In' must have a value",
        ),
        (NODEPOOL, "spec.template.spec.requirements.0.values", ["1", "2"], "single non-negative integer"),
        (NODEPOOL, "spec.template.spec.requirements.0.values", ["-1"], "single non-negative integer"),
        (NODEPOOL, "spec.template.spec.requirements.0.key", "kubernetes.io/hostname", "is restricted"),
        (
            NODEPOOL,
            "spec.template.spec.requirements.0.key",
            "karpenter.sh/foo",
            'domain "karpenter.sh" is restricted',
        ),
        (
            NODEPOOL,
            "spec.template.spec.requirements.0.key",
            "karpenter.k8s.aws/gpu-name",
            "not a well-known key",
        ),
        (
            NODEPOOL,
            "spec.disruption.budgets",
            [{"nodes": "1", "schedule": "@daily"}],
            "'schedule' must be set with 'duration'",
        ),
        # EC2NodeClass CEL
        (NODECLASS, "spec.instanceProfile", "prof", "exactly one of ['role', 'instanceProfile']"),
        (NODECLASS, "spec.role", None, "exactly one of ['role', 'instanceProfile']"),
        (NODECLASS, "spec.amiSelectorTerms", [{"alias": "ubuntu@latest"}], "known family"),
        (
            NODECLASS,
            "spec.amiSelectorTerms",
            [{"alias": "al2023@latest"}, {"id": "ami-1"}],
            "cannot be combined",
        ),
        (NODECLASS, "spec.amiSelectorTerms", [{"id": "ami-1"}], "amiFamily is required"),
        (
            NODECLASS,
            "spec.blockDeviceMappings",
            [{"deviceName": "/dev/xvda", "ebs": {"volumeType": "gp3"}}],
            "snapshotID or volumeSize",
        ),
        (NODECLASS, "spec.tags", {"kubernetes.io/cluster/x": "owned"}, "is restricted"),
        # ScaledObject CEL (max defaults to 100)
        (SCALEDOBJECT, "spec.minReplicaCount", 5, "minReplicaCount must be less than or equal"),
        (
            _with(SCALEDOBJECT, "spec.maxReplicaCount", None),
            "spec.minReplicaCount",
            101,
            "less than or equal",
        ),
        # InferencePool CEL
        (POOL, "spec.targetPorts", [{"number": 8000}, {"number": 8000}], "port number must be unique"),
        (POOL, "spec.endpointPickerRef", {"name": "epp"}, "port is required"),
    ],
)
def test_invalid_objects_are_named(obj: Obj, path: str, value: Any, expect: str) -> None:
    messages = _msgs(_with(obj, path, value))
    assert any(expect in m for m in messages), messages


def test_core_kinds_and_metadata() -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "Bad_Name", "labels": {"a/b/c": "x"}},
        "data": {"k": 1},
    }
    messages = _msgs(cm)
    assert any(m.startswith("metadata.name:") for m in messages)
    assert any(m.startswith("metadata.labels[a/b/c]") for m in messages)
    assert any(m.startswith("data.k:") for m in messages)
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "a.b"},
        "spec": {"ports": [{"port": 80}]},
    }
    assert any("DNS-1123" in m for m in _msgs(svc))  # Service names are DNS labels, no dots
    assert _msgs({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}) == [
        "apiVersion: no schema for example.com/v1 Widget"
    ]


def test_auto_mode_nodeclass_schema() -> None:
    good = {
        "apiVersion": "eks.amazonaws.com/v1",
        "kind": "NodeClass",
        "metadata": {"name": "gpu"},
        "spec": {
            "role": "r",
            "subnetSelectorTerms": [{"tags": {"a": "b"}}],
            "securityGroupSelectorTerms": [{"id": "sg-1"}],
            "ephemeralStorage": {"size": "200Gi", "iops": 16000, "throughput": 1000},
        },
    }
    assert _msgs(good) == []
    assert any("16001" in m for m in _msgs(_with(good, "spec.ephemeralStorage.iops", 16001)))
    assert any(
        "'amiSelectorTerms' was unexpected" in m for m in _msgs(_with(good, "spec.amiSelectorTerms", []))
    )


def test_vendored_schemas_are_small_and_complete() -> None:
    total = sum(p.stat().st_size for p in CRD_DIR.glob("*.json"))
    assert total < 600_000, total  # upstream LWS + DisaggregatedSet alone are 2.8 MB
    kinds = {kind for _, kind in known_kinds()}
    assert {
        "LeaderWorkerSet",
        "DisaggregatedSet",
        "NodePool",
        "EC2NodeClass",
        "NodeClass",
        "ScaledObject",
        "InferencePool",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
    } <= kinds
    lws = crd_schema("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
    assert lws is not None
    assert "description" not in str(lws)[:2000]


def test_strip_keeps_a_property_named_description() -> None:
    schema = {
        "description": "drop",
        "properties": {
            "description": {"type": "string", "description": "drop"},
            "x": {"description": "drop", "type": "integer"},
        },
    }
    assert strip_descriptions(schema) == {
        "properties": {"description": {"type": "string"}, "x": {"type": "integer"}}
    }
