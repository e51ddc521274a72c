"""`eksinfer doctor` against a fake Kubernetes API server.

No cluster runs here, so a small HTTP server answers the read-only GETs doctor makes (CRDs, StorageClasses,
DaemonSets, Services of one namespace, Nodes) with JSON shaped like the API server's, and checks the bearer
token. The kubeconfig is real and authenticates through an exec credential plugin, as `aws eks get-token`
does, so the official client's kubeconfig and exec handling run unchanged.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from eksinfer.deploy.context import RenderOptions
from eksinfer.deploy.doctor import diagnose, read_cluster
from eksinfer.deploy.doctor.checks import gateway_refs, namespaces_to_read
from eksinfer.deploy.lint.manifests import load
from eksinfer.deploy.render import render_plan
from eksinfer.errors import ConfigError, UpstreamError
from tests.deploy import plans

Obj = dict[str, Any]
TOKEN = "k8s-aws-v1.fake-token"
CLUSTER = "prod-gpu"
CRDS = Path(__file__).resolve().parents[2] / "src/eksinfer/deploy/schemas/crds"


def crd(group: str, kind: str, versions: list[str]) -> Obj:
    return {
        "metadata": {"name": f"{kind.lower()}s.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": kind, "plural": f"{kind.lower()}s"},
            "scope": "Namespaced",
            "versions": [{"name": v, "served": True, "storage": i == 0} for i, v in enumerate(versions)],
        },
    }


def every_crd() -> list[Obj]:
    out = []
    for path in sorted(CRDS.glob("*.json")):
        meta = json.loads(path.read_text())
        out.append(crd(meta["group"], meta["kind"], [meta["version"]]))
    return [*out, crd("nvidia.com", "ClusterPolicy", ["v1"])]


def daemonset(ns: str, name: str, image: str, node_selector: dict[str, str] | None = None) -> Obj:
    spec: Obj = {"containers": [{"name": "c", "image": image}]}
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"template": {"spec": spec}}}


@dataclass
class FakeCluster:
    crds: list[Obj] = field(default_factory=list)
    storage_classes: list[str] = field(default_factory=list)
    daemonsets: list[Obj] = field(default_factory=list)
    services: dict[str, list[Obj]] = field(default_factory=dict)  # namespace -> Services
    nodes: list[Obj] = field(default_factory=list)
    ingress_classes: list[str] = field(default_factory=list)
    gateways: set[tuple[str, str]] = field(default_factory=set)
    version: tuple[str, str] = ("1", "34+")  # EKS reports the minor with a "+"
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)

    def answer(self, method: str, path: str, auth: str | None) -> tuple[int, Obj]:
        self.requests.append((method, path))
        if auth != f"Bearer {TOKEN}":
            return 401, {"kind": "Status", "code": 401, "message": "Unauthorized"}
        route = path.split("?", 1)[0].rstrip("/").split("/")
        if route == ["", "version"]:
            return 200, {"major": self.version[0], "minor": self.version[1], "gitVersion": "v1.34.2-eks-1"}
        items: list[Obj] | None = None
        if path.startswith("/apis/apiextensions.k8s.io/v1/customresourcedefinitions"):
            items = self.crds
        elif path.startswith("/apis/storage.k8s.io/v1/storageclasses"):
            items = [
                {"metadata": {"name": n}, "provisioner": "efs.csi.aws.com"} for n in self.storage_classes
            ]
        elif path.startswith("/apis/apps/v1/daemonsets"):
            items = self.daemonsets
        elif route[:4] == ["", "api", "v1", "namespaces"] and route[-1] == "services":
            items = self.services.get(route[4], [])
        elif path.startswith("/api/v1/nodes"):
            items = self.nodes
        elif path.startswith("/apis/networking.k8s.io/v1/ingressclasses"):
            items = [
                {"metadata": {"name": n}, "spec": {"controller": "ingress.k8s.aws/alb"}}
                for n in self.ingress_classes
            ]
        elif route[:4] == ["", "apis", "gateway.networking.k8s.io", "v1"] and route[6:7] == ["gateways"]:
            if (route[5], route[7]) in self.gateways:
                return 200, {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                             "metadata": {"namespace": route[5], "name": route[7]}}  # fmt: skip
            return 404, {"kind": "Status", "code": 404}
        if items is None:
            return 404, {"kind": "Status", "code": 404}
        return 200, {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}


@pytest.fixture
def cluster() -> Iterator[tuple[FakeCluster, str]]:
    state = FakeCluster()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            status, doc = state.answer(self.command, self.path, self.headers.get("Authorization"))
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _reply

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def kubeconfig(tmp_path: Path, url: str, token: str = TOKEN) -> Path:
    """A kubeconfig like `aws eks update-kubeconfig` writes: the ARN as cluster name, an exec plugin."""
    plugin = tmp_path / "get_token.py"
    credential = {
        "kind": "ExecCredential",
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "spec": {},
        "status": {"expirationTimestamp": "2099-01-01T00:00:00Z", "token": token},
    }
    plugin.write_text(f"import json, sys\nprint(json.dumps({credential!r}))\n")
    arn = f"arn:aws:eks:us-east-1:111122223333:cluster/{CLUSTER}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": arn, "cluster": {"server": url}}],
        "users": [
            {
                "name": arn,
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1beta1",
                        "command": sys.executable,
                        "args": [str(plugin), "eks", "get-token", "--cluster-name", CLUSTER],
                        "interactiveMode": "Never",
                    }
                },
            }
        ],
        "contexts": [{"name": "prod", "context": {"cluster": arn, "user": arn}}],
        "current-context": "prod",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


def complete(state: FakeCluster) -> None:
    state.crds = every_crd()
    state.storage_classes = ["efs-sc", "gp3"]
    state.daemonsets = [
        daemonset("kube-system", "aws-efa-k8s-device-plugin", "602401143452.dkr.ecr/efa:v0.5")
    ]
    state.services = {
        "monitoring": [{"metadata": {"name": "prometheus-operated"}, "spec": {"ports": [{"port": 9090}]}}]
    }


def run_doctor(tmp_path: Path, url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """`eksinfer doctor TREE --kubeconfig ...` as a user runs it, on the tree rendered under `tmp_path`."""
    kube = str(kubeconfig(tmp_path, url))
    cmd = [sys.executable, "-m", "eksinfer.cli.main", "doctor", str(tmp_path / "tree"), "--kubeconfig", kube]
    return subprocess.run([*cmd, *flags], capture_output=True, text=True, timeout=60)


def _checks(findings: list[Any]) -> list[tuple[str, str]]:
    return [(f.check, f.severity) for f in findings]


def test_empty_cluster_lists_every_gap_with_its_fix(cluster: tuple[FakeCluster, str], tmp_path: Path) -> None:
    state, url = cluster
    render_plan(plans.tier3("karpenter"), tmp_path / "tree")
    docs = load(tmp_path / "tree")
    facts = read_cluster(kubeconfig(tmp_path, url), None, namespaces_to_read(docs))
    assert facts.cluster_name == CLUSTER
    findings = diagnose(docs, facts)
    checks = _checks(findings)
    missing = {f.subject.split(" ", 1)[0] for f in findings if f.check == "crd-missing"}
    assert missing == {
        "NodePool",
        "EC2NodeClass",
        "DisaggregatedSet",
        "ScaledObject",
        "PodMonitor",
        "ServiceMonitor",
        "PrometheusRule",
    }
    for check in (
        "storage-class-missing",
        "efa-plugin-missing",
        "prometheus-unreachable",
        "cluster-name-mismatch",
    ):
        assert (check, "error") in checks
    # Bottlerocket pools bring their own plugin: without the operator only the GPU metrics are missing
    assert ("gpu-operator-missing", "warning") in checks
    assert all(f.why and f.fix for f in findings)
    [name] = [f for f in findings if f.check == "cluster-name-mismatch"][:1]
    assert f"--cluster {CLUSTER}" in name.fix
    assert {m for m, _ in state.requests} == {"GET"}  # doctor only reads


@pytest.mark.slow
def test_ready_cluster_has_no_findings(cluster: tuple[FakeCluster, str], tmp_path: Path) -> None:
    state, url = cluster
    complete(state)
    render_plan(plans.tier3("karpenter"), tmp_path / "tree", options=RenderOptions(cluster_name=CLUSTER))
    proc = run_doctor(tmp_path, url, "--context", "prod")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"0 error(s), 0 warning(s): {tmp_path / 'tree'} on {CLUSTER}" in proc.stdout


@pytest.mark.slow
def test_cli_exit_status_and_json(cluster: tuple[FakeCluster, str], tmp_path: Path) -> None:
    state, url = cluster
    complete(state)
    state.storage_classes = []
    render_plan(plans.tier2("karpenter"), tmp_path / "tree", options=RenderOptions(cluster_name=CLUSTER))
    proc = run_doctor(tmp_path, url, "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["cluster"], doc["errors"]) == (CLUSTER, 1)
    [finding] = doc["findings"]
    assert finding["check"] == "storage-class-missing"
    assert "aws-efs-csi-driver" in finding["fix"]


def test_crd_at_another_version(cluster: tuple[FakeCluster, str], tmp_path: Path) -> None:
    state, url = cluster
    complete(state)
    state.crds = [c for c in state.crds if c["spec"]["names"]["kind"] != "ScaledObject"]
    state.crds.append(crd("keda.sh", "ScaledObject", ["v1beta1"]))
    render_plan(plans.tier1("auto-mode"), tmp_path / "tree", options=RenderOptions(cluster_name=CLUSTER))
    docs = load(tmp_path / "tree")
    findings = diagnose(docs, read_cluster(kubeconfig(tmp_path, url), None, namespaces_to_read(docs)))
    assert _checks(findings) == [("crd-version", "error")]
    assert "v1beta1" in findings[0].subject


def test_second_device_plugin_on_auto_mode(cluster: tuple[FakeCluster, str], tmp_path: Path) -> None:
    state, url = cluster
    complete(state)
    plugin = "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"
    state.daemonsets += [
        daemonset("kube-system", "nvidia-device-plugin", plugin),
        daemonset("kube-system", "hybrid-plugin", plugin, {"eks.amazonaws.com/compute-type": "hybrid"}),
    ]
    render_plan(plans.tier1("auto-mode"), tmp_path / "tree", options=RenderOptions(cluster_name=CLUSTER))
    docs = load(tmp_path / "tree")
    findings = diagnose(docs, read_cluster(kubeconfig(tmp_path, url), None, namespaces_to_read(docs)))
    assert _checks(findings) == [("device-plugin-on-auto-mode", "error")]
    assert "kube-system/nvidia-device-plugin" in findings[0].subject


def test_rejected_token_and_unknown_context(cluster: tuple[FakeCluster, str], tmp_path: Path) -> None:
    _, url = cluster
    with pytest.raises(UpstreamError, match="HTTP 401"):
        read_cluster(kubeconfig(tmp_path, url, token="expired"), None)
    with pytest.raises(ConfigError) as err:
        read_cluster(kubeconfig(tmp_path, url), "staging")
    assert err.value.field == "--context"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "eksinfer.cli.main",
            "doctor",
            str(tmp_path),
            "--kubeconfig",
            str(tmp_path / "missing"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: --kubeconfig")


@pytest.mark.slow
def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "eksinfer.cli.main",
            "doctor",
            str(tmp_path),
            "--kubeconfig",
            str(kubeconfig(tmp_path, "http://127.0.0.1:9")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 4, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "cannot reach the API server" in line


CERT = "arn:aws:acm:us-east-1:111122223333:certificate/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"


@pytest.mark.parametrize(
    ("opts", "present"),
    [
        (RenderOptions(cluster_name=CLUSTER, expose="alb", certificate_arn=CERT), "ingress"),
        (RenderOptions(cluster_name=CLUSTER, expose="httproute", gateway_ref="infra/public"), "gateway"),
    ],
)
def test_exposure_needs_its_controller_or_gateway(
    cluster: tuple[FakeCluster, str], tmp_path: Path, opts: RenderOptions, present: str
) -> None:
    state, url = cluster
    complete(state)
    render_plan(plans.tier1("auto-mode"), tmp_path / "tree", options=opts)
    docs = load(tmp_path / "tree")
    config = kubeconfig(tmp_path, url)

    def run() -> list[Any]:
        return diagnose(docs, read_cluster(config, None, namespaces_to_read(docs), gateway_refs(docs)))

    findings = [f for f in run() if f.check != "crd-missing"]  # the Gateway API CRDs are not in the fake
    assert _checks(findings) == [("exposure-missing", "error")]
    if present == "ingress":
        state.ingress_classes = ["alb"]
    else:
        state.gateways = {("infra", "public")}
    assert [f for f in run() if f.check != "crd-missing"] == []


@pytest.mark.parametrize(
    ("factory", "severity"),
    [
        (lambda: plans.tier1("managed-node-group"), "error"),  # the operator is these nodes' device plugin
        (plans.dra, "warning"),  # the DRA driver advertises the GPUs; only DCGM/GFD would be missing
        (lambda: plans.tier1("auto-mode"), "warning"),  # Auto Mode's own plugin
    ],
)
def test_missing_gpu_operator_severity_follows_who_advertises_gpus(
    tmp_path: Path, factory: Any, severity: str
) -> None:
    from eksinfer.deploy.doctor.cluster import ClusterFacts

    render_plan(factory(), tmp_path / "t")
    found = [f for f in diagnose(load(tmp_path / "t"), ClusterFacts()) if f.check == "gpu-operator-missing"]
    assert [f.severity for f in found] == [severity]


def test_old_kubernetes_is_named_with_the_upgrade(cluster: tuple[FakeCluster, str], tmp_path: Path) -> None:
    state, url = cluster
    complete(state)
    render_plan(plans.tier1("auto-mode"), tmp_path / "tree", options=RenderOptions(cluster_name=CLUSTER))
    docs = load(tmp_path / "tree")
    facts = read_cluster(kubeconfig(tmp_path, url), None, namespaces_to_read(docs))
    assert facts.version == (1, 34)
    assert diagnose(docs, facts) == []
    state.version = ("1", "29+")
    facts = read_cluster(kubeconfig(tmp_path, url), None, namespaces_to_read(docs))
    [finding] = diagnose(docs, facts)
    assert (finding.check, finding.severity) == ("kubernetes-version", "error")
    assert "preStop sleep" in finding.subject
    assert f"update-cluster-version --name {CLUSTER} --kubernetes-version 1.30" in finding.fix
