"""The migration path: `plan --phase N` limits and stacks, and what changes between two phases.

Plans are rendered in memory with the real renderer; nothing is applied (no Kubernetes API server here).
The Bedrock and cascade parts are left out explicitly (`without`) where a test is about the other parts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from eksinfer.catalog import get_model
from eksinfer.deploy.render import build_tree
from eksinfer.errors import InfeasibleError, UsageError
from eksinfer.planner import Constraints, OnPremPool, Plan, PlanRequest, Traffic, make_plan, phases

WITHOUT = ("bedrock-fallback", "cascade", "hybrid-nodes")


def _plan(phase: str, model: str = "llama-3.1-8b", rate: float = 4.0, **constraints: object) -> Plan:
    c = Constraints(phase=phase, without=constraints.pop("without", WITHOUT), **constraints)  # type: ignore[arg-type]
    return make_plan(PlanRequest(model=get_model(model), traffic=Traffic(requests_per_s=rate), constraints=c))


def test_each_phase_adds_to_the_last_and_karpenter_replaces_auto_mode() -> None:
    names = {p: [c.name for c in phases.components(p)] for p in phases.PHASES}
    for earlier, later in zip(phases.PHASES, phases.PHASES[1:], strict=False):
        kept = [n for n in names[earlier] if n != "auto-mode"]
        now = [n for n in names[later] if n != "auto-mode"]
        assert now[: len(kept)] == kept, (earlier, later)
        assert len(now) > len(kept), (earlier, later)
    assert "auto-mode" in names["1.5"]
    assert "auto-mode" not in names["2"]
    assert "karpenter" in names["2"]
    assert "slo-autoscaling" in names["4"]
    assert "slo-autoscaling" not in names["3"]


def test_a_part_this_build_cannot_render_makes_its_phase_and_later_ones_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = tuple(
        dataclasses.replace(c, missing=lambda: "not built") if c.name == "kv-aware-routing" else c
        for c in phases.COMPONENTS
    )
    monkeypatch.setattr(phases, "COMPONENTS", fake)
    _plan("1")  # phase 1 does not include it
    for phase in ("1.5", "2", "4"):
        with pytest.raises(UsageError) as err:
            _plan(phase)
        assert err.value.field == "--phase"
        assert "kv-aware-routing" in str(err.value)
        assert "not built" in str(err.value)


def test_bedrock_fallback_is_an_error_until_the_build_has_it_unless_left_out() -> None:
    missing = phases._bedrock_missing()
    if missing is None:
        assert _plan("1", without=()).stack is not None
        return
    with pytest.raises(UsageError) as err:
        _plan("1", without=())
    assert err.value.field == "--phase"
    assert "bedrock-fallback" in str(err.value)
    plan = _plan("1", without=("bedrock-fallback",))
    assert plan.stack is not None
    assert plan.stack.without == ["bedrock-fallback"]
    assert "bedrock-fallback" not in plan.stack.components


def test_early_phases_run_auto_mode_single_node_aggregated_and_later_ones_karpenter() -> None:
    one = _plan("1", "llama-3.3-70b", 20.0)
    assert one.nodes.provisioning == "auto-mode"
    assert one.routing.strategy == "round-robin"
    assert one.mode == "aggregated"
    assert all(r.engine.nodes_per_replica == 1 for r in one.roles)
    assert one.stack is not None
    assert not one.stack.gpu_operator
    assert one.stack.autoscaling == "load"
    half = _plan("1.5", "llama-3.3-70b", 20.0)
    assert half.nodes.provisioning == "auto-mode"
    assert half.routing.strategy == "kv-aware"
    assert half.stack is not None
    assert half.stack.gpu_operator
    two = _plan("2", "llama-3.3-70b", 20.0)
    assert two.nodes.provisioning == "karpenter"
    four = _plan("4", "llama-3.3-70b", 20.0)
    assert four.stack is not None
    assert four.stack.autoscaling == "slo"
    with pytest.raises(InfeasibleError, match="multi-node engines arrive in phase 2"):
        _plan("1.5", "kimi-k2.5", 1.0)


def _triggers(plan: Plan) -> list[str]:
    tree = build_tree(plan)
    scaled = [o for p, o in tree.objects.items() if p.startswith("autoscaling/")]
    return [t["name"] for o in scaled for t in o["spec"]["triggers"]]


def test_phase_objects_gpu_operator_device_plugin_label_and_slo_trigger() -> None:
    one, half, four = _plan("1"), _plan("1.5"), _plan("4")
    t1, t15 = build_tree(one), build_tree(half)
    assert "helm/gpu-operator-values.yaml" not in t1.files
    assert "helm/gpu-operator-values.yaml" in t15.files
    pool = next(o for p, o in t1.objects.items() if p.startswith("nodes/nodepool-"))
    assert "nvidia.com/gpu.deploy.device-plugin" not in pool["spec"]["template"]["metadata"]["labels"]
    assert "ttft" not in _triggers(half)
    assert "ttft" in _triggers(four)
    assert _triggers(four) == [*_triggers(half), "ttft"]


def test_diff_from_one_phase_to_the_next_lists_added_removed_and_changed_objects() -> None:
    one, half, two, four = _plan("1"), _plan("1.5"), _plan("2"), _plan("4")
    changes = {(c.kind, c.path) for c in phases.diff_stacks(one, half)}
    assert ("added", "helm/gpu-operator-values.yaml") in changes
    assert any(kind == "changed" and path.startswith("nodes/nodepool-") for kind, path in changes)
    assert not any(path.startswith("nodes/ec2nodeclass-") for _, path in changes)
    to_two = phases.diff_stacks(half, two)
    added = [c for c in to_two if c.kind == "added"]
    assert [c.detail for c in added] == [f"EC2NodeClass/{two.name}-gpu"]
    to_four = phases.diff_stacks(two, four)
    assert [(c.kind, c.path.split("/")[0], c.detail) for c in to_four] == [
        ("changed", "autoscaling", "spec.triggers")
    ]
    assert phases.diff_stacks(two, two) == []
    assert "routing: round-robin -> kv-aware" in phases.plan_changes(one, half)
    assert "provisioning: auto-mode -> karpenter" in phases.plan_changes(half, two)


def test_diff_trees_names_the_fields_that_differ() -> None:
    @dataclasses.dataclass
    class Tree:
        objects: dict[str, dict[str, object]]
        files: dict[str, str]

    a = Tree(
        {"x.yaml": {"kind": "A", "metadata": {"name": "a"}, "spec": {"n": 1, "keep": True}},
         "gone.yaml": {"kind": "B", "metadata": {"name": "b"}}},
        {"f.txt": "one", "README.md": "r1"},
    )  # fmt: skip
    b = Tree(
        {"x.yaml": {"kind": "A", "metadata": {"name": "a"}, "spec": {"n": 2, "keep": True, "new": 1}},
         "new.yaml": {"kind": "C", "metadata": {"name": "c"}}},
        {"f.txt": "two", "README.md": "r2"},
    )  # fmt: skip
    got = [(c.kind, c.path, c.detail) for c in phases.diff_trees(a, b)]
    assert got == [
        ("removed", "gone.yaml", "B/b"),
        ("added", "new.yaml", "C/c"),
        ("changed", "x.yaml", "spec.n, spec.new"),
        ("changed", "f.txt", "contents"),
    ]


@pytest.mark.parametrize(
    ("phase", "constraints", "flag"),
    [
        ("7", {}, "--phase"),
        ("1", {"needs_mig": True}, "--needs-mig"),
        ("1.5", {"custom_ami": True}, "--custom-ami"),
        ("2", {"on_prem": OnPremPool("H100", 8)}, "--on-prem"),
        ("4", {"on_prem": OnPremPool("H100", 8)}, "--on-prem"),  # left out: hybrid-nodes
        ("3", {"without": ("bedrock-fallback", "cascade")}, "--on-prem"),
        ("2", {"needs_dra": True}, "--needs-dra"),
        ("2", {"without": ("gpu-operator",)}, "--without"),
    ],
)
def test_flags_that_belong_to_another_phase_are_refused_naming_the_flag(
    phase: str, constraints: dict[str, object], flag: str
) -> None:
    with pytest.raises(UsageError) as err:
        _plan(phase, **constraints)
    assert err.value.field == flag


def test_without_needs_a_phase() -> None:
    c = Constraints(without=("bedrock-fallback",))
    with pytest.raises(UsageError) as err:
        make_plan(PlanRequest(model=get_model("llama-3.1-8b"), constraints=c))
    assert err.value.field == "--without"


def test_phase_three_adds_the_hybrid_pool_objects() -> None:
    two = _plan("2")
    three = _plan("3", without=("bedrock-fallback", "cascade"), on_prem=OnPremPool("H100", 8))
    assert three.on_prem is not None
    assert three.on_prem.replicas > 0
    added = {c.detail for c in phases.diff_stacks(two, three) if c.kind == "added"}
    assert "DaemonSet/nvidia-device-plugin-hybrid" in added
    assert f"Deployment/{three.name}-engine-onprem" in added


def test_capacity_block_needs_phase_two(tmp_path: Path) -> None:
    book = tmp_path / "blocks.yaml"
    book.write_text("capacity_block_as_of: '2026-11-20'\ncapacity_block: {g6e.xlarge: 1.5}\n")
    with pytest.raises(UsageError, match="arrive in phase 2") as err:
        _plan("1.5", capacity_type="capacity-block", prices=book)
    assert err.value.field == "--capacity-type"
    assert _plan("2", capacity_type="capacity-block", prices=book).instance.type == "g6e.xlarge"


def test_a_phase_with_a_bedrock_tier_that_maps_no_model_is_refused() -> None:
    plan = _plan("2")
    with_bedrock = plan.model_copy(
        update={"stack": phases.stack("2", ("cascade", "hybrid-nodes")), "fallback": None}
    )
    with pytest.raises(UsageError, match="no Amazon Bedrock model is mapped") as err:
        phases.check_plan(with_bedrock)
    assert err.value.field == "--phase"
    phases.check_plan(plan)  # left out on request: nothing to check


def test_without_bedrock_fallback_turns_the_plans_fallback_off_and_no_fallback_counts_as_left_out() -> None:
    assert make_plan(PlanRequest(model=get_model("llama-3.1-8b"))).fallback is not None  # on by default
    plan = _plan("2")  # WITHOUT holds bedrock-fallback
    assert plan.fallback is None
    off = _plan("2", without=("cascade", "hybrid-nodes"), bedrock_fallback=False)
    assert off.fallback is None
    assert off.stack is not None
    assert "bedrock-fallback" in off.stack.without
    assert "bedrock-fallback" not in off.stack.components
