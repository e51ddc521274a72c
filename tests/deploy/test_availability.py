"""Availability in every rendered tree: KEDA owns engine replicas, PodDisruptionBudgets, zone spread, a
gateway of at least two replicas on different nodes, and shutdown sized from the plan's longest request."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from eksinfer.cli.main import build_app
from eksinfer.deploy.context import RenderOptions, make_ctx
from eksinfer.deploy.render import RenderedTree, build_tree
from tests.deploy import plans

Obj = dict[str, Any]


def _objs(tree: RenderedTree, kind: str) -> list[Obj]:
    return [o for o in tree.objects.values() if o["kind"] == kind]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _pod_labels(tree: RenderedTree) -> list[tuple[str, dict[str, str]]]:
    """(workload name, pod labels) of every pod template in the tree."""
    out = []
    for obj in tree.objects.values():
        if obj["kind"] not in ("Deployment", "LeaderWorkerSet", "DisaggregatedSet"):
            continue  # DaemonSets are not evicted by drains
        spec = obj.get("spec") or {}
        if "template" in spec:
            out.append((obj["metadata"]["name"], spec["template"]["metadata"]["labels"]))
        for lws in [spec] + [r["spec"] for r in spec.get("roles", [])]:
            lwt = lws.get("leaderWorkerTemplate")
            if lwt:
                out.append((obj["metadata"]["name"], lwt["leaderTemplate"]["metadata"]["labels"]))
    return out


@pytest.mark.parametrize("case", sorted(plans.CASES))
def test_keda_targets_carry_no_replicas(case: str) -> None:
    tree = build_tree(plans.CASES[case]())
    by_kind_name = {(o["kind"], o["metadata"]["name"]): o for o in tree.objects.values()}
    targets = [so["spec"]["scaleTargetRef"] for so in _objs(tree, "ScaledObject")]
    assert targets
    for ref in targets:
        if ref["kind"] == "DisaggregatedSetRoleScaler":
            [ds] = _objs(tree, "DisaggregatedSet")
            role = ref["name"].removeprefix(ds["metadata"]["name"] + "-")
            [spec] = [r["spec"] for r in ds["spec"]["roles"] if r["name"] == role]
            assert "replicas" not in spec
        else:
            assert "replicas" not in by_kind_name[(ref["kind"], ref["name"])]["spec"], ref


@pytest.mark.parametrize("case", sorted(plans.CASES))
def test_every_pod_is_covered_by_one_disruption_budget(case: str) -> None:
    tree = build_tree(plans.CASES[case]())
    pdbs = _objs(tree, "PodDisruptionBudget")
    for name, labels in _pod_labels(tree):
        covering = [p for p in pdbs if _matches(p["spec"]["selector"]["matchLabels"], labels)]
        assert len(covering) == 1, f"{name}: {len(covering)} budgets"
        assert covering[0]["spec"] == {"maxUnavailable": 1, "selector": covering[0]["spec"]["selector"]}


def test_gateway_is_spread_and_drains_within_its_grace_period() -> None:
    plan = plans.tier2("karpenter")
    tree = build_tree(plan)
    [dep] = [d for d in _objs(tree, "Deployment") if d["metadata"]["name"].endswith("-gateway")]
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] >= 2
    [term] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert _matches(
        term["podAffinityTerm"]["labelSelector"]["matchLabels"], dep["spec"]["selector"]["matchLabels"]
    )
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    [cm] = [c for c in _objs(tree, "ConfigMap") if c["metadata"]["name"].endswith("-gateway")]
    server = yaml.safe_load(cm["data"]["gateway.yaml"])["server"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + server["drain_timeout_s"]
    # plan: TTFT 0.6 s + 5 x 300 output tokens x 0.03 s = 45.6 s, clamped up to 60 s
    assert server["drain_timeout_s"] == make_ctx(plan).longest_request_s() == 60
    assert server["route_headers"] is False


def test_longest_request_follows_the_plan() -> None:
    base = plans.tier2("karpenter")
    slow = base.model_copy(
        update={
            "traffic": base.traffic.model_copy(update={"output_tokens": 2000}),
            "prediction": base.prediction.model_copy(update={"tpot_s": 0.05}),
        }
    )
    # 0.6 + 5 x 2000 x 0.05 = 500.6 -> 501 s
    assert make_ctx(slow).longest_request_s() == 501
    tree = build_tree(slow)
    [engine] = [d for d in _objs(tree, "Deployment") if d["metadata"]["name"].endswith("-engine")]
    pod = engine["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 30 + 501 + 10
    assert pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"] == 30
    assert pod["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "ScheduleAnyway"


def test_route_headers_and_prometheus_url_are_render_options(tmp_path: Path) -> None:
    opts = RenderOptions(
        route_headers=True, prometheus_url="http://amp-proxy.monitoring:8005/workspaces/ws-1"
    )
    tree = build_tree(plans.tier1(), opts)
    [cm] = [c for c in _objs(tree, "ConfigMap") if c["metadata"]["name"].endswith("-gateway")]
    assert yaml.safe_load(cm["data"]["gateway.yaml"])["server"]["route_headers"] is True
    for so in _objs(tree, "ScaledObject"):
        assert {t["metadata"]["serverAddress"] for t in so["spec"]["triggers"]} == {opts.prometheus_url}
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plans.tier1().model_dump_json())
    out = tmp_path / "out"
    args = ["render", str(plan_file), "-o", str(out), "--prometheus-url", "http://prom.obs:9090"]
    args += ["--gateway-image", "123456789012.dkr.ecr.us-east-1.amazonaws.com/eksinfer:0.1.0"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    so = yaml.safe_load(next((out / "autoscaling").glob("*.yaml")).read_text())
    assert so["spec"]["triggers"][0]["metadata"]["serverAddress"] == "http://prom.obs:9090"
    gw = yaml.safe_load(next((out / "gateway").glob("deployment-*.yaml")).read_text())
    assert gw["spec"]["template"]["spec"]["containers"][0]["image"].startswith("123456789012.dkr.ecr")


@pytest.mark.parametrize(
    ("flag", "value"), [("--prometheus-url", "prom:9090"), ("--gateway-image", "has space:1")]
)
def test_bad_render_flags_are_one_line_errors(tmp_path: Path, flag: str, value: str) -> None:
    (tmp_path / "plan.json").write_text(plans.tier1().model_dump_json())
    cmd = [sys.executable, "-m", "eksinfer.cli.main", "render", "plan.json", "-o", "o", flag, value]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: ")
    assert flag in line
