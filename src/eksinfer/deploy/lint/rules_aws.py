"""Lint rules on the gateway's AWS side: a Bedrock tier needs an AWS identity on the gateway's pods."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from eksinfer import untrusted
from eksinfer.deploy.lint.core import rule
from eksinfer.deploy.lint.manifests import Doc, Tree
from eksinfer.errors import ConfigError

Hit = tuple[Doc, str, str, str]
IRSA = "eks.amazonaws.com/role-arn"


def _bedrock_pools(cm: Doc) -> Iterator[tuple[str, str]]:
    """(data key, pool name) of every `kind: bedrock` pool in a gateway config held by this ConfigMap."""
    for key, value in (cm.obj.get("data") or {}).items():
        try:
            cfg = untrusted.load_yaml(str(value), where="ConfigMap data", field=None)
        except (yaml.YAMLError, ConfigError):
            continue
        if not isinstance(cfg, dict) or "endpoints" not in cfg or not isinstance(cfg.get("pools"), dict):
            continue
        for name, pool in cfg["pools"].items():
            if isinstance(pool, dict) and pool.get("kind") == "bedrock":
                yield str(key), str(name)


def _namespace(doc: Doc) -> str:
    return str((doc.obj.get("metadata") or {}).get("namespace") or "default")


def _mounts(unit_spec: dict[str, Any], cm_name: str) -> bool:
    return any((v.get("configMap") or {}).get("name") == cm_name for v in unit_spec.get("volumes") or [])


def _associated(tree: Tree, namespace: str, account: str) -> bool:
    """An EKS Pod Identity association for namespace/account in an eksctl ClusterConfig of the tree."""
    for doc in tree.of_kind("ClusterConfig"):
        for assoc in (doc.obj.get("iam") or {}).get("podIdentityAssociations") or []:
            if isinstance(assoc, dict) and (assoc.get("namespace"), assoc.get("serviceAccountName")) == (
                namespace,
                account,
            ):
                return True
    return False


def _annotated(tree: Tree, namespace: str, account: str) -> bool:
    for sa in tree.of_kind("ServiceAccount"):
        if sa.name == account and _namespace(sa) == namespace:
            return bool(((sa.obj.get("metadata") or {}).get("annotations") or {}).get(IRSA))
    return False


@rule("bedrock-without-identity", "warning", "a Bedrock tier on pods with no AWS identity")
def bedrock_without_identity(tree: Tree) -> Iterator[Hit]:
    for cm in tree.of_kind("ConfigMap"):
        pools = list(_bedrock_pools(cm))
        if not pools:
            continue
        namespace = _namespace(cm)
        for unit in tree.units:
            if _namespace(unit.doc) != namespace or not _mounts(unit.spec, cm.name):
                continue
            account = str(unit.spec.get("serviceAccountName") or "default")
            if _annotated(tree, namespace, account) or _associated(tree, namespace, account):
                continue
            key, pool = pools[0]
            yield (
                cm,
                f"data.{key}.pools.{pool}",
                f"the gateway pods ({unit.doc.oid}, service account {namespace}/{account}) have neither an "
                "EKS Pod Identity association nor an IRSA role: every call to Bedrock fails for lack of "
                "credentials, so the last tier of the cascade is not there when the GPUs fail",
                f"create a Pod Identity association for {namespace}/{account} (eksinfer render writes "
                "bedrock/pod-identity.eksctl.yaml) or annotate the service account with "
                f"{IRSA}: ROLE_ARN; the role needs bedrock:InvokeModel and InvokeModelWithResponseStream",
            )
