"""`render --autoscale FILE`: the recommendation's triggers, behaviour and node limit, valid against the
schemas (KEDA and Karpenter CRDs, Kubernetes) the other renders are checked with."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from eksinfer.autoscale.recommendation import (
    RECOMMENDATION_SCHEMA,
    Recommendation,
    RecommendedBehavior,
    RecommendedEvidence,
    RecommendedTrigger,
)
from eksinfer.deploy.context import RenderOptions
from eksinfer.deploy.render import build_tree
from eksinfer.deploy.validate import validate_objects
from eksinfer.planner.schema import Plan

EKSINFER = [sys.executable, "-m", "eksinfer.cli.main"]


def _rec(plan: Plan, triggers: list[RecommendedTrigger], static: int | None = None) -> Recommendation:
    return Recommendation(
        schema_version=RECOMMENDATION_SCHEMA,
        plan=plan.name,
        policy="slo-predictive:0.8" if triggers else f"static:{static}",
        static_replicas=static,
        triggers=triggers,
        behavior=RecommendedBehavior(
            min_replicas=static or 2,
            max_replicas=static or 7,
            polling_s=15,
            cooldown_s=686,
            up_window_s=0,
            up_pods=7,
            up_period_s=15,
            down_window_s=686,
            down_pods=1,
            down_period_s=343,
        ),
        max_nodes=static or 7,
        evidence=RecommendedEvidence(trace="t", requests=10, attainment=0.99, gpu_hours=1.0, cost_usd=2.0),
    )


def _objects(plan: Plan, rec: Recommendation | None) -> list[dict[str, Any]]:
    return build_tree(plan, RenderOptions(autoscale=rec)).all_objects()


def _kind(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [obj] = [o for o in objs if o["kind"] == kind]
    return obj


def test_forecast_recommendation_renders_and_validates(plan_70b: Plan) -> None:
    rec = _rec(plan_70b, [RecommendedTrigger(name="forecast", threshold=0.8383, lead_s=358)])
    objs = _objects(plan_70b, rec)
    assert [str(p) for p in validate_objects(objs)] == []
    so = _kind(objs, "ScaledObject")["spec"]
    assert (so["minReplicaCount"], so["maxReplicaCount"]) == (2, 7)
    assert so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"]["policies"] == [
        {"type": "Pods", "value": 7, "periodSeconds": 15}
    ]
    [trigger] = so["triggers"]
    assert trigger["name"] == "forecast"
    assert trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["threshold"] == "0.8383"
    query = trigger["metadata"]["query"]
    assert "predict_linear(" in query
    assert "[30m:1m], 358)" in query
    assert "vllm:request_success_total" in query
    pool = _kind(objs, "NodePool")
    assert pool["spec"]["limits"]["nvidia.com/gpu"] == str(7 * plan_70b.instance.gpus)


def test_default_render_is_unchanged_without_a_recommendation(plan_70b: Plan) -> None:
    objs = _objects(plan_70b, None)
    so = _kind(objs, "ScaledObject")["spec"]
    assert [t["name"] for t in so["triggers"]] == ["running", "queue", "kv-cache", "ttft"]
    pool = _kind(objs, "NodePool")
    assert pool["spec"]["limits"]["nvidia.com/gpu"] == str(plan_70b.nodes.max_nodes * plan_70b.instance.gpus)


def test_queue_and_static_recommendations(plan_70b: Plan) -> None:
    queue = _objects(plan_70b, _rec(plan_70b, [RecommendedTrigger(name="queue", threshold=3)]))
    assert [str(p) for p in validate_objects(queue)] == []
    [trigger] = _kind(queue, "ScaledObject")["spec"]["triggers"]
    assert (trigger["name"], trigger["metadata"]["threshold"]) == ("queue", "3")
    static = _objects(plan_70b, _rec(plan_70b, [], static=4))
    assert [str(p) for p in validate_objects(static)] == []
    so = _kind(static, "ScaledObject")["spec"]
    assert (so["minReplicaCount"], so["maxReplicaCount"]) == (4, 4)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EKSINFER, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d.update(plan="other-plan"), "is for plan 'other-plan'"),
        (lambda d: d["triggers"][0].update(threshold=-1), "--autoscale.triggers.0.threshold"),
        (lambda d: d.update(surprise=1), "--autoscale.surprise"),
    ],
)
def test_render_cli_refuses_a_bad_recommendation(
    tmp_path: Path, plan_70b: Plan, edit: Any, words: str
) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan_70b.model_dump_json())
    data = json.loads(_rec(plan_70b, [RecommendedTrigger(name="queue", threshold=3)]).model_dump_json())
    edit(data)
    rec_file = tmp_path / "rec.json"
    rec_file.write_text(json.dumps(data))
    proc = _run(
        ["render", str(plan_file), "-o", str(tmp_path / "out"), "--autoscale", str(rec_file)], tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert words in lines[0]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (scripts/ensure-deb.sh)")
def test_every_rendered_trigger_query_is_valid_promql(tmp_path: Path, plan_70b: Plan) -> None:
    triggers = [
        RecommendedTrigger(name="forecast", threshold=0.8, lead_s=358),
        RecommendedTrigger(name="queue", threshold=2),
        RecommendedTrigger(name="ttft", threshold=2),
    ]
    objs = _objects(plan_70b, _rec(plan_70b, triggers))
    queries = [t["metadata"]["query"] for t in _kind(objs, "ScaledObject")["spec"]["triggers"]]
    rules = [{"record": f"check:trigger{i}", "expr": q} for i, q in enumerate(queries)]
    path = tmp_path / "triggers.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "triggers", "rules": rules}]}))
    promtool = shutil.which("promtool")
    assert promtool is not None
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
