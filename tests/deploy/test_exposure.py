"""Exposure: an HTTPRoute on an existing Gateway or an ALB Ingress with an ACM certificate, sized from the
plan's longest request; the removed --inference-pool says why in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from eksinfer.deploy.context import RenderOptions
from eksinfer.deploy.lint import lint_path
from eksinfer.deploy.render import RenderedTree, build_tree, render_plan
from eksinfer.deploy.validate import validate_objects
from eksinfer.errors import ConfigError
from tests.deploy import plans

Obj = dict[str, Any]
CERT = "arn:aws:acm:us-east-1:111122223333:certificate/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"


def _one(tree: RenderedTree, kind: str) -> Obj:
    [obj] = [o for o in tree.objects.values() if o["kind"] == kind]
    return obj


def test_httproute_attaches_to_the_gateway_and_routes_the_api_only() -> None:
    opts = RenderOptions(expose="httproute", gateway_ref="infra/public/https", hostname="llm.example.com")
    tree = build_tree(plans.tier1(), opts)
    route = _one(tree, "HTTPRoute")["spec"]
    assert route["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra", "name": "public",
         "sectionName": "https"}
    ]  # fmt: skip
    assert route["hostnames"] == ["llm.example.com"]
    [rule] = route["rules"]
    assert [m["path"]["value"] for m in rule["matches"]] == ["/v1", "/health"]
    assert rule["backendRefs"] == [{"name": "qwen3-32b-gateway", "port": 80}]
    assert rule["timeouts"]["request"] == "90s"  # longest request 60 s + 30 s
    assert not [o for o in tree.objects.values() if o["kind"] == "Ingress"]
    assert [str(p) for p in validate_objects(tree.all_objects())] == []
    bad = {**_one(tree, "HTTPRoute"), "spec": {**route, "rules": [{**rule, "timeouts": {"request": "90 s"}}]}}
    [problem] = validate_objects([bad])
    assert "timeouts.request" in str(problem)


def test_alb_ingress_terminates_tls_with_the_certificate(tmp_path: Path) -> None:
    opts = RenderOptions(expose="alb", certificate_arn=CERT)
    tree = build_tree(plans.tier2(), opts)
    ing = _one(tree, "Ingress")
    notes = ing["metadata"]["annotations"]
    assert notes["alb.ingress.kubernetes.io/certificate-arn"] == CERT
    assert notes["alb.ingress.kubernetes.io/listen-ports"] == '[{"HTTPS": 443}]'
    assert notes["alb.ingress.kubernetes.io/target-type"] == "ip"
    # the ALB's idle timeout and draining follow the plan's longest request (60 s here), never below 60 s
    assert notes["alb.ingress.kubernetes.io/load-balancer-attributes"] == "idle_timeout.timeout_seconds=60"
    assert (
        notes["alb.ingress.kubernetes.io/target-group-attributes"]
        == "deregistration_delay.timeout_seconds=60"
    )
    assert ing["spec"]["ingressClassName"] == "alb"
    [rule] = ing["spec"]["rules"]
    assert {p["path"] for p in rule["http"]["paths"]} == {"/v1", "/health"}
    ns = _one(tree, "Namespace")
    assert ns["metadata"]["labels"]["elbv2.k8s.aws/pod-readiness-gate-inject"] == "enabled"
    assert [str(p) for p in validate_objects(tree.all_objects())] == []
    render_plan(plans.tier2(), tmp_path / "t", options=opts)
    assert [f for f in lint_path(tmp_path / "t") if f.severity == "error"] == []
    assert "get ingress" in (tmp_path / "t" / "README.md").read_text()


@pytest.mark.parametrize(
    ("opts", "field"),
    [
        (RenderOptions(expose="httproute"), "--gateway-ref"),
        (RenderOptions(expose="httproute", gateway_ref="public"), "--gateway-ref"),
        (RenderOptions(expose="alb"), "--certificate-arn"),
        (RenderOptions(expose="alb", certificate_arn="arn:aws:iam::1:cert"), "--certificate-arn"),
        (RenderOptions(expose="alb", certificate_arn=CERT, hostname="Bad Host"), "--hostname"),
    ],
)
def test_exposure_needs_its_reference(opts: RenderOptions, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_tree(plans.tier1(), opts)
    assert err.value.field == field


def test_inference_pool_option_is_gone_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_text(plans.tier1().model_dump_json())
    cmd = [sys.executable, "-m", "eksinfer.cli.main", "render", "plan.json", "-o", "o", "--inference-pool"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: --inference-pool: removed")
    assert "ext_proc" in line
