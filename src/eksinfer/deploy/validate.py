"""Offline validation of rendered (or any) Kubernetes objects, as an API server would judge them.

core kinds      `kubernetes-validate`'s bundled JSON schemas for the target Kubernetes version, strict
                (unknown fields are errors)
custom kinds    the vendored CRD schemas (schemas/crds), made strict the same way: an object schema with
                `properties` and neither `additionalProperties` nor `x-kubernetes-preserve-unknown-fields`
                gets `additionalProperties: false`, so a misspelt field fails instead of being pruned
CEL rules       the ones that matter, re-implemented in `eksinfer.deploy.cel`
metadata        name is a DNS-1123 subdomain (label for Services), label keys and values are well formed
eksctl config   `eksctl.io/v1alpha5 ClusterConfig` (not an API object): the fields render relies on
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import jsonschema

from eksinfer.deploy import cel
from eksinfer.deploy.schemas import crd_schema

DEFAULT_K8S_VERSION = "1.34"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Kinds whose names must be DNS-1035 labels (Service names become DNS labels).
_LABEL_NAMED = {"Service"}


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation failure: which object, which field, what is wrong."""

    object: str
    field: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.object}: {self.field}: {self.message}" if self.field else f"{self.object}: {self.message}"
        )


def object_id(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind', '?')}/{meta.get('name', '?')}"


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@cache
def _crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator | None:
    schema = crd_schema(api_version, kind)
    if schema is None:
        return None
    strict = _strict(copy.deepcopy(schema))
    strict["properties"]["metadata"] = {"type": "object"}  # metadata is checked by _metadata_problems
    return jsonschema.Draft7Validator(strict)


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _metadata_problems(obj: Mapping[str, Any]) -> list[Problem]:
    oid, meta = object_id(obj), obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    pattern = _DNS_LABEL if obj.get("kind") in _LABEL_NAMED else _DNS_SUBDOMAIN
    out = []
    if not name or len(name) > (63 if obj.get("kind") in _LABEL_NAMED else 253) or not pattern.match(name):
        out.append(Problem(oid, "metadata.name", f"{name!r} is not a valid DNS-1123 name"))
    for key, value in (meta.get("labels") or {}).items():
        prefix, _, short = key.rpartition("/")
        if len(short) > 63 or not _LABEL_NAME.match(short) or (prefix and not _DNS_SUBDOMAIN.match(prefix)):
            out.append(Problem(oid, f"metadata.labels[{key}]", "invalid label key"))
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            out.append(Problem(oid, f"metadata.labels[{key}]", f"invalid label value {value!r}"))
    return out


def _core_problems(obj: Mapping[str, Any], k8s_version: str) -> list[Problem] | None:
    """Problems from kubernetes-validate, or None when it has no schema for the kind."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    try:
        kubernetes_validate.validate(dict(obj), k8s_version, strict=True)
    except SchemaNotFoundError:
        return None
    except kubernetes_validate.ValidationError as err:
        return [Problem(object_id(obj), _path(err.absolute_path), str(err.message).splitlines()[0])]
    return []


def _eksctl_problems(obj: Mapping[str, Any]) -> list[Problem]:
    oid, out = object_id(obj), []
    meta = obj.get("metadata") or {}
    if not meta.get("name") or not meta.get("region"):
        out.append(Problem(oid, "metadata", "name and region are required"))
    for i, group in enumerate(obj.get("managedNodeGroups") or []):
        for field in ("name", "instanceType", "minSize", "maxSize", "desiredCapacity"):
            if field not in group:
                out.append(Problem(oid, f"managedNodeGroups[{i}].{field}", "required"))
        if not group.get("minSize", 0) <= group.get("desiredCapacity", 0) <= group.get("maxSize", 0):
            out.append(Problem(oid, f"managedNodeGroups[{i}]", "needs minSize <= desiredCapacity <= maxSize"))
    return out


def schema_problems(obj: Mapping[str, Any], k8s_version: str = DEFAULT_K8S_VERSION) -> list[Problem] | None:
    """Metadata and JSON-schema problems (no CEL); None when no schema is known for the kind."""
    api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
    if api_version == "eksctl.io/v1alpha5" and kind == "ClusterConfig":
        return _eksctl_problems(obj)
    validator = _crd_validator(api_version, kind)
    if validator is not None:
        errors = sorted(validator.iter_errors(dict(obj)), key=lambda e: list(e.absolute_path))
        found = [
            Problem(object_id(obj), _path(e.absolute_path), str(e.message).splitlines()[0]) for e in errors
        ]
        return _metadata_problems(obj) + found
    core = _core_problems(obj, k8s_version)
    return None if core is None else _metadata_problems(obj) + core


def validate_object(obj: Mapping[str, Any], k8s_version: str = DEFAULT_K8S_VERSION) -> list[Problem]:
    """Every problem found in one object; an unknown kind is itself a problem."""
    found = schema_problems(obj, k8s_version)
    if found is None:
        api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        return [
            *_metadata_problems(obj),
            Problem(object_id(obj), "apiVersion", f"no schema for {api_version} {kind}"),
        ]
    return found + [Problem(object_id(obj), field, msg) for field, msg in cel.check(obj)]


def validate_objects(
    objects: Iterable[Mapping[str, Any]], k8s_version: str = DEFAULT_K8S_VERSION
) -> list[Problem]:
    return [p for obj in objects for p in validate_object(obj, k8s_version)]
