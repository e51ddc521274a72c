"""Capacity: compatible instance types from the plan's alternatives, the on-demand fallback pool behind a
spot plan, capacity reservations and placement groups on the EC2NodeClass (schema and CEL checked by lint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from eksinfer.deploy.context import RenderOptions, make_ctx
from eksinfer.deploy.lint import lint_path
from eksinfer.deploy.nodes import instance_types
from eksinfer.deploy.render import RenderedTree, build_tree, render_plan
from eksinfer.errors import ConfigError
from eksinfer.planner.schema import Plan
from tests.deploy import plans

Obj = dict[str, Any]


def _alt(instance_type: str) -> Obj:
    return {
        "instance_type": instance_type,
        "mode": "aggregated",
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "precision": "fp8",
        "replicas": 2,
        "monthly_usd": 3000.0,
        "per_million_tokens_usd": 1.2,
        "ttft_s": 0.5,
        "tpot_s": 0.03,
    }


def _with(plan: Plan, **update: Any) -> Plan:
    doc = plan.model_dump()
    for key, value in update.items():
        doc[key] = {**doc[key], **value} if isinstance(value, dict) else value
    return Plan.model_validate(doc)


def _pools(tree: RenderedTree) -> list[Obj]:
    return [o for o in tree.objects.values() if o["kind"] == "NodePool"]


def _req(pool: Obj, key: str) -> list[str]:
    reqs = pool["spec"]["template"]["spec"]["requirements"]
    [values] = [r["values"] for r in reqs if r["key"] == key]
    return list(values)


def test_compatible_alternatives_join_the_pool() -> None:
    # g6e.xlarge (1 x L40S, 4 vCPU, 32 GiB per GPU). g6e.2xlarge: same GPU, more CPU -> fits. p5: H100 80 GiB,
    # FP8, 24 vCPU per GPU -> fits. g6.xlarge: L4 24 GiB < 48 -> no. p4d: A100 40 GiB, no FP8 -> no.
    plan = _with(
        plans.tier1("karpenter"),
        alternatives=[
            _alt(t) for t in ("g6.xlarge", "g6e.2xlarge", "p4d.24xlarge", "p5.48xlarge", "x9.nope")
        ],
    )
    assert instance_types(make_ctx(plan)) == ["g6e.xlarge", "g6e.2xlarge", "p5.48xlarge"]
    [pool] = _pools(build_tree(plan))
    assert _req(pool, "node.kubernetes.io/instance-type") == ["g6e.xlarge", "g6e.2xlarge", "p5.48xlarge"]
    assert _req(pool, "karpenter.k8s.aws/instance-family") == ["g6e", "p5"]


def test_multi_node_plans_keep_their_one_type() -> None:
    plan = _with(plans.tier3("karpenter"), alternatives=[_alt("p5e.48xlarge")])
    assert instance_types(make_ctx(plan)) == [plan.instance.type]


def test_spot_plan_gets_an_on_demand_fallback_pool(tmp_path: Path) -> None:
    plan = _with(plans.tier1("auto-mode"), instance={"capacity_type": "spot"})
    tree = build_tree(plan)
    primary, fallback = sorted(_pools(tree), key=lambda p: -p["spec"]["weight"])
    assert _req(primary, "karpenter.sh/capacity-type") == ["spot"]
    assert _req(fallback, "karpenter.sh/capacity-type") == ["on-demand"]
    assert primary["spec"]["weight"] > fallback["spec"]["weight"]
    # the engine follows whichever pool has capacity: both label their nodes with the selected group
    [engine] = [
        o for o in tree.objects.values() if o["kind"] == "Deployment" and "engine" in o["metadata"]["name"]
    ]
    selector = engine["spec"]["template"]["spec"]["nodeSelector"]
    for pool in (primary, fallback):
        labels = pool["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in selector.items())
    render_plan(plan, tmp_path / "t")
    assert [f for f in lint_path(tmp_path / "t") if f.severity == "error"] == []
    assert len(_pools(build_tree(plans.tier1("auto-mode")))) == 1  # on-demand plans need no fallback


def test_capacity_reservations_and_placement_group(tmp_path: Path) -> None:
    opts = RenderOptions(
        capacity_reservations=("cr-0123456789abcdef0", "eksinfer.io/reservation=llm"),
        placement_group="llm-cluster-pg",
    )
    plan = plans.tier3("karpenter")
    tree = build_tree(plan, opts)
    [cls] = [o for o in tree.objects.values() if o["kind"] == "EC2NodeClass"]
    assert cls["spec"]["capacityReservationSelectorTerms"] == [
        {"id": "cr-0123456789abcdef0"},
        {"tags": {"eksinfer.io/reservation": "llm"}},
    ]
    assert cls["spec"]["placementGroupSelector"] == {"name": "llm-cluster-pg"}
    [pool] = _pools(tree)
    assert _req(pool, "karpenter.sh/capacity-type") == ["reserved", "on-demand"]
    render_plan(plan, tmp_path / "t", options=opts)
    assert [f for f in lint_path(tmp_path / "t") if f.severity == "error"] == []


@pytest.mark.parametrize(
    ("plan", "opts", "field"),
    [
        (
            plans.tier1("auto-mode"),
            RenderOptions(capacity_reservations=("cr-0abc",)),
            "--capacity-reservation",
        ),
        (plans.tier1("karpenter"), RenderOptions(capacity_reservations=("nope",)), "--capacity-reservation"),
        (plans.dra(), RenderOptions(placement_group="pg"), "--placement-group"),
    ],
)
def test_reservations_refused_where_not_rendered(plan: Plan, opts: RenderOptions, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_tree(plan, opts)
    assert err.value.field == field
