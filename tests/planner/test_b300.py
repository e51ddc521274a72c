"""B300 (p6-b300.48xlarge) end to end: priced where the price book has a row (us-west-2 only), planned for
the large models, MIG packed by memory as well as compute, rendered to manifests that validate, and marked
unmeasured ground (its measured runs fit the Blackwell MoE kernels; no catalog model was measured on it)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from eksinfer.catalog import get_gpu, get_model, mig_instances_per_gpu
from eksinfer.deploy.lint import lint_path
from eksinfer.deploy.render import RenderedTree, build_tree, render_plan
from eksinfer.deploy.validate import validate_objects
from eksinfer.errors import InfeasibleError
from eksinfer.planner import Constraints, Plan, PlanRequest, Traffic, make_plan
from eksinfer.planner.search import mig_slices

B300_WEST = {"instance_families": ("p6-b300",), "region": "us-west-2"}
HOURS_PER_MONTH = 720


def _plan(model_id: str, rps: float = 1.0, **constraints: Any) -> Plan:
    request = PlanRequest(
        get_model(model_id), Traffic(requests_per_s=rps), constraints=Constraints(**constraints)
    )
    return make_plan(request)


def _objs(tree: RenderedTree, kind: str) -> list[dict[str, Any]]:
    return [o for o in tree.objects.values() if o["kind"] == kind]


def _check_tree(plan: Plan, tmp_path: Any) -> RenderedTree:
    tree = build_tree(plan)
    assert [str(p) for p in validate_objects(tree.all_objects())] == []
    render_plan(plan, tmp_path / plan.name)
    assert [f"{f.rule} {f.object} {f.field}" for f in lint_path(tmp_path / plan.name)] == []
    return tree


def test_deepseek_fp4_on_b300_is_one_node_at_the_us_west_2_price(tmp_path: Any) -> None:
    plan = _plan("deepseek-v3", precision="fp4", **B300_WEST)
    engine = plan.roles[0].engine
    assert (plan.instance.type, plan.instance.gpu, plan.instance.region) == (
        "p6-b300.48xlarge",
        "B300",
        "us-west-2",
    )
    assert plan.model.hf_id == "nvidia/DeepSeek-V3-0324-FP4"
    assert (engine.tensor_parallel_size, engine.pipeline_parallel_size, plan.nodes.total_nodes) == (8, 1, 1)
    assert plan.instance.price_per_hour_usd == 142.416
    assert plan.cost.monthly_usd == pytest.approx(142.416 * HOURS_PER_MONTH)
    # B300's runs fitted the Blackwell FP8 / FP4 MoE kernels, not DeepSeek-V3: unmeasured ground on the MoE
    # warning, not on the GPU, and never the B200 held-out basis
    assert not plan.ground.measured
    assert not any(w.startswith("B300:") for w in plan.ground.warnings)
    assert any(w.startswith("MoE: expert constants fitted on") and "B300" in w for w in plan.ground.warnings)
    assert "held out" not in plan.ground.basis.split(";")[0]
    tree = _check_tree(plan, tmp_path)
    [pool] = _objs(tree, "NodePool")
    reqs = {r["key"]: r["values"] for r in pool["spec"]["template"]["spec"]["requirements"] if "values" in r}
    assert reqs["node.kubernetes.io/instance-type"] == ["p6-b300.48xlarge"]


def test_kimi_on_b300_pulls_kv_over_all_16_efa_interfaces(tmp_path: Any) -> None:
    plan = _plan("kimi-k2.5", **B300_WEST)
    assert (plan.instance.type, plan.tier, plan.mode) == ("p6-b300.48xlarge", 3, "disaggregated")
    assert plan.instance.efa_gbps == 6400
    tree = _check_tree(plan, tmp_path)
    engines = [
        d["spec"]["template"]["spec"]["containers"][0]
        for d in _objs(tree, "Deployment") + _objs(tree, "LeaderWorkerSet")
        if d["metadata"]["labels"].get("eksinfer.io/role") in ("prefill", "decode", "engine")
    ]
    assert len(engines) == 2  # prefill and decode; their pods pull KV between nodes over 16 EFA cards of 17
    assert {c["resources"]["limits"]["vpc.amazonaws.com/efa"] for c in engines} == {"16"}


def test_b300_is_skipped_in_us_east_1_and_the_error_says_where_it_is_priced() -> None:
    with pytest.raises(InfeasibleError) as err:
        _plan("kimi-k2.5", instance_families=("p6-b300",))
    assert err.value.binding == ["price"]
    assert "p6-b300.48xlarge (priced in us-west-2: --region)" in str(err.value)
    assert "on-demand in us-east-1" in str(err.value)
    # among priced families the skipped one is still named, after the real reason
    with pytest.raises(InfeasibleError) as err:
        _plan("deepseek-v3", instance_families=("p6-b300", "g6"))
    assert str(err.value).startswith("memory:")
    assert "skipped for want of a price (on-demand in us-east-1: p6-b300.48xlarge" in str(err.value)


def test_b300_mig_counts_follow_memory_not_only_compute() -> None:
    slices = {profile: per_gpu for profile, _, per_gpu in mig_slices(get_gpu("B300"))}
    # NVIDIA: 7 compute and 8 memory slices; 1g.67gb takes 2 memory slices, so 4 per GPU, not 7
    assert slices == {"1g.34gb": 7, "1g.67gb": 4, "2g.67gb": 3, "3g.135gb": 2, "4g.135gb": 1, "7g.269gb": 1}
    assert get_gpu("H100").mig_instances_per_gpu("1g.20gb") == 4  # the same rule on the H100's 1g.20gb
    assert mig_instances_per_gpu("B300", "all-1g.67gb") == 4  # what render reads off a plan's label
    assert mig_instances_per_gpu("X9", "all-2g.20gb") == 3  # a GPU the catalog lacks: compute slices only
    for gpu in ("A100-40GB", "A100-80GB", "H100", "H200", "B200"):  # one 1g profile: unchanged counts
        assert [n for _, _, n in mig_slices(get_gpu(gpu))] == [7, 3, 2, 1, 1], gpu


def test_mig_on_b300_picks_the_1g_slice_whose_memory_fits(tmp_path: Any) -> None:
    # Qwen3-32B FP8: about 31 GiB of weights, more than 1g.34gb holds (34 GB x 0.93), so the 67 GB slice;
    # of the two 67 GB profiles the 1g one packs 4 a GPU against 3, at the same node cost
    plan = _plan("qwen3-32b", precision="fp8", needs_mig=True, **B300_WEST)
    assert plan.nodes.mig_profile == "all-1g.67gb"
    assert plan.prediction.weight_gib_per_gpu > 34 * 0.93
    # a dense model on B300: its measured runs are MoE only, so the GPU itself is unmeasured ground
    assert "B300: measured runs are FP8 / NVFP4 MoE only (MiniMax-M2.5, Kimi K2.5)" in plan.ground.warnings
    used = sum(role.replicas for role in plan.roles)
    assert f"4 per GPU: {used} of 32 slices used, {32 - used} free" in plan.why["parallelism"]
    assert any(a.instance_type == "p6-b300.48xlarge (2g.67gb)" for a in plan.alternatives)
    tree = _check_tree(plan, tmp_path)
    # the MIG manager's layouts, in the operator's namespace
    [config] = [o for o in _objs(tree, "ConfigMap") if o["metadata"]["namespace"] == "gpu-operator"]
    layouts = yaml.safe_load(config["data"]["config.yaml"])["mig-configs"]
    assert layouts["all-1g.67gb"] == [{"devices": "all", "mig-enabled": True, "mig-devices": {"1g.67gb": 4}}]
    assert layouts["all-disabled"] == [{"devices": "all", "mig-enabled": False}]
    values = yaml.safe_load(tree.files["helm/gpu-operator-values.yaml"])
    assert values["migManager"]["config"] == {
        "name": config["metadata"]["name"],
        "create": False,
        "default": "all-disabled",
    }
    [pool] = _objs(tree, "NodePool")
    assert pool["spec"]["template"]["metadata"]["labels"]["nvidia.com/mig.config"] == "all-1g.67gb"
    # the pod's share of the node is one of 32 slices (8 GPUs x 4), not one of 56
    [engine] = [
        d for d in _objs(tree, "Deployment") if d["metadata"]["labels"].get("eksinfer.io/role") == "engine"
    ]
    requests = engine["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert requests["cpu"] in (5, "5")  # floor(192 / 32 x 0.85)
    assert requests["memory"] == "102Gi"  # floor(4096 / 32 x 0.80)
