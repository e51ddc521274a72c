"""What `doctor` reads from the cluster, in one pass of GETs: CRDs, StorageClasses, DaemonSets, the Services
of the namespaces the tree points at, and node labels. The official `kubernetes` client loads the kubeconfig,
so contexts, certificates and exec credential plugins (`aws eks get-token`) work as they do for kubectl.
Responses are read as plain JSON (`_preload_content=False`): doctor needs a few fields, not typed models.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eksinfer.errors import ConfigError, UpstreamError

Obj = dict[str, Any]


@dataclass
class ClusterFacts:
    """The cluster as doctor sees it; built by `read_cluster` or by hand in tests."""

    server: str = ""
    version: tuple[int, int] | None = None  # Kubernetes (major, minor) of the API server
    cluster_name: str | None = None  # from the kubeconfig (EKS ARN or `get-token --cluster-name`)
    crds: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (group, kind) -> served versions
    storage_classes: set[str] = field(default_factory=set)
    daemonsets: list[Obj] = field(default_factory=list)
    services: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (ns, name) -> ports
    namespaces_read: set[str] = field(default_factory=set)
    node_labels: list[dict[str, str]] = field(default_factory=list)
    ingress_classes: set[str] = field(default_factory=set)
    gateways: set[tuple[str, str]] = field(default_factory=set)  # (ns, name) of the Gateways asked about


def _cluster_name(context: Obj, clusters: list[Obj], users: list[Obj]) -> str | None:
    """The EKS cluster name: `--cluster-name` of an `aws eks get-token` exec, else the ARN's last part."""
    ctx = context.get("context") or {}
    user = next((u.get("user") or {} for u in users if u.get("name") == ctx.get("user")), {})
    args = [str(a) for a in ((user.get("exec") or {}).get("args") or [])]
    for flag in ("--cluster-name", "--cluster-id"):
        if flag in args and args.index(flag) + 1 < len(args):
            return args[args.index(flag) + 1]
    name = str(ctx.get("cluster") or "")
    if match := re.fullmatch(r"arn:aws[-a-z]*:eks:[^:]+:\d+:cluster/(.+)", name):
        return match.group(1)
    return None


def _load(kubeconfig: Path | None, context: str | None) -> tuple[Any, str | None]:
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    try:
        contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig) if kubeconfig else None
        )
    except (ConfigException, OSError) as err:
        raise ConfigError(f"cannot read the kubeconfig: {err}", field="--kubeconfig") from None
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    if chosen is None:
        names = ", ".join(str(c.get("name")) for c in contexts)
        raise ConfigError(f"no context {context!r} in the kubeconfig (has: {names})", field="--context")
    import yaml

    path = kubeconfig or Path(config.KUBE_CONFIG_DEFAULT_LOCATION).expanduser()
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    name = _cluster_name(chosen, raw.get("clusters") or [], raw.get("users") or [])
    try:
        api = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig) if kubeconfig else None, context=chosen.get("name")
        )
    except (ConfigException, OSError) as err:  # an exec plugin that fails, a missing certificate file
        raise ConfigError(f"cannot use context {chosen.get('name')!r}: {err}", field="--context") from None
    return api, name


def _get(call: Any, what: str, server: str, **kwargs: Any) -> Obj:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        resp = call(_preload_content=False, _request_timeout=10, **kwargs)
    except ApiException as err:
        if err.status in (401, 403):
            raise UpstreamError(
                f"the API server at {server} refused to list {what} (HTTP {err.status}): check the context's "
                "credentials and RBAC"
            ) from None
        if err.status == 404:
            return {"items": []}
        raise UpstreamError(f"listing {what} at {server} failed: HTTP {err.status}") from None
    except HTTPError as err:
        raise UpstreamError(f"cannot reach the API server at {server}: {err}") from None
    doc: Obj = json.loads(resp.data)
    return doc


def read_cluster(
    kubeconfig: Path | None,
    context: str | None,
    namespaces: Iterable[str] = (),
    gateways: Iterable[tuple[str, str]] = (),
) -> ClusterFacts:
    """One pass of read-only GETs; raises ConfigError (kubeconfig, context) or UpstreamError (API server)."""
    from kubernetes import client

    api, name = _load(kubeconfig, context)
    server = str(api.configuration.host)
    facts = ClusterFacts(server=server, cluster_name=name)
    with api:
        found = _get(client.VersionApi(api).get_code, "the version", server)
        digits = [re.sub(r"\D", "", str(found.get(k, ""))) for k in ("major", "minor")]  # EKS: "34+"
        if all(digits):
            facts.version = (int(digits[0]), int(digits[1]))
        ext, storage = client.ApiextensionsV1Api(api), client.StorageV1Api(api)
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        for crd in _get(ext.list_custom_resource_definition, "CRDs", server)["items"]:
            spec = crd.get("spec") or {}
            kind = str((spec.get("names") or {}).get("kind", ""))
            served = [str(v["name"]) for v in spec.get("versions") or [] if v.get("served", True)]
            facts.crds[(str(spec.get("group", "")), kind)] = served
        for sc in _get(storage.list_storage_class, "StorageClasses", server)["items"]:
            facts.storage_classes.add(str(sc["metadata"]["name"]))
        facts.daemonsets = _get(apps.list_daemon_set_for_all_namespaces, "DaemonSets", server)["items"]
        for ns in sorted(set(namespaces)):
            facts.namespaces_read.add(ns)
            for svc in _get(core.list_namespaced_service, f"Services in {ns}", server, namespace=ns)["items"]:
                ports = [int(p.get("port", 0)) for p in (svc.get("spec") or {}).get("ports") or []]
                facts.services[(ns, str(svc["metadata"]["name"]))] = ports
        for node in _get(core.list_node, "Nodes", server)["items"]:
            facts.node_labels.append(dict((node.get("metadata") or {}).get("labels") or {}))
        net = client.NetworkingV1Api(api)
        for cls in _get(net.list_ingress_class, "IngressClasses", server)["items"]:
            facts.ingress_classes.add(str(cls["metadata"]["name"]))
        custom = client.CustomObjectsApi(api)
        for ns, name in sorted(set(gateways)):
            found = _get(
                custom.get_namespaced_custom_object,
                f"Gateway {ns}/{name}",
                server,
                group="gateway.networking.k8s.io",
                version="v1",
                namespace=ns,
                plural="gateways",
                name=name,
            )
            if "metadata" in found:
                facts.gateways.add((ns, name))
    return facts
