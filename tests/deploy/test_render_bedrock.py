"""The Bedrock tier in the rendered tree: gateway pools and cascade, the ServiceAccount's AWS identity (EKS
Pod Identity by default, IRSA with --bedrock-role-arn), the IAM policy on exactly the mapped model, and lint
flagging a Bedrock pool without identity. AWS itself is not reachable: the policy is checked as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from eksinfer.cli.main import build_app
from eksinfer.deploy.context import RenderOptions
from eksinfer.deploy.lint import lint_path
from eksinfer.deploy.render import RenderedTree, build_tree, render_plan
from eksinfer.deploy.validate import validate_objects
from eksinfer.errors import ConfigError
from eksinfer.gateway.bedrock.config import parse_bedrock_pool
from eksinfer.planner.schema import Plan
from tests.deploy import plans

PROFILE = "us.meta.llama3-3-70b-instruct-v1:0"
ROLE = "arn:aws:iam::123456789012:role/gw-bedrock"
Obj = dict[str, Any]


def with_fallback(plan: Plan, model_id: str = PROFILE, **over: Any) -> Plan:
    doc = plan.model_dump()
    doc["fallback"] = {
        "region": "us-east-1",
        "model_id": model_id,
        "inference_profile": True,
        "match": "same",
    }
    doc["fallback"].update(over)
    return Plan.model_validate(doc)


def gateway_yaml(tree: RenderedTree) -> dict[str, Any]:
    cm = next(
        o
        for o in tree.objects.values()
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-gateway")
    )
    loaded: dict[str, Any] = yaml.safe_load(cm["data"]["gateway.yaml"])
    return loaded


def account(tree: RenderedTree) -> Obj:
    return next(
        o
        for o in tree.objects.values()
        if o["kind"] == "ServiceAccount" and o["metadata"]["name"].endswith("-gateway")
    )


def test_pod_identity_by_default() -> None:
    tree = build_tree(with_fallback(plans.tier2()))
    config = gateway_yaml(tree)
    assert config["models"] == {"llama-3.3-70b": {"cascade": ["default", "bedrock"], "ttft_slo_s": 2.0}}
    assert config["pools"]["default"] == {"kind": "vllm", "max_context_tokens": 65536}
    pool = parse_bedrock_pool(config["pools"]["bedrock"])  # what the gateway will validate it with
    assert (pool.region, pool.models) == ("us-east-1", {"llama-3.3-70b": PROFILE})
    assert "eks.amazonaws.com/role-arn" not in account(tree)["metadata"].get("annotations", {})
    assert "bedrock/pod-identity.eksctl.yaml" in account(tree)["metadata"]["annotations"]["eksinfer.io/needs"]
    eksctl = yaml.safe_load(tree.files["bedrock/pod-identity.eksctl.yaml"])
    [assoc] = eksctl["iam"]["podIdentityAssociations"]
    assert (assoc["namespace"], assoc["serviceAccountName"]) == ("inference", "llama-70b-gateway")
    assert assoc["createServiceAccount"] is False
    assert assoc["permissionPolicy"] == json.loads(tree.files["bedrock/iam-policy.json"])
    assert {"name": "eks-pod-identity-agent"} in eksctl["addons"]
    assert validate_objects(tree.all_objects()) == []
    assert "bedrock/" not in "".join(tree.objects)  # files beside the tree, never applied by kustomize


def test_policy_allows_exactly_the_mapped_profile_and_its_model() -> None:
    policy = json.loads(build_tree(with_fallback(plans.tier2())).files["bedrock/iam-policy.json"])
    profile_arn = f"arn:aws:bedrock:us-east-1:*:inference-profile/{PROFILE}"
    [direct, through] = policy["Statement"]
    actions = ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"]
    assert (direct["Effect"], direct["Action"], direct["Resource"]) == ("Allow", actions, [profile_arn])
    assert through["Resource"] == ["arn:aws:bedrock:*::foundation-model/meta.llama3-3-70b-instruct-v1:0"]
    assert through["Condition"] == {"StringLike": {"bedrock:InferenceProfileArn": profile_arn}}
    assert through["Action"] == actions


def test_in_region_model_gets_one_foundation_model_arn() -> None:
    plan = with_fallback(plans.tier1(), "qwen.qwen3-32b-v1:0", inference_profile=False, region="us-west-2")
    policy = json.loads(build_tree(plan).files["bedrock/iam-policy.json"])
    assert [s["Resource"] for s in policy["Statement"]] == [
        ["arn:aws:bedrock:us-west-2::foundation-model/qwen.qwen3-32b-v1:0"]
    ]


def test_irsa_with_a_role_arn() -> None:
    tree = build_tree(with_fallback(plans.tier2()), RenderOptions(bedrock_role_arn=ROLE))
    assert account(tree)["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": ROLE}
    assert "bedrock/pod-identity.eksctl.yaml" not in tree.files
    policy = json.loads(tree.files["bedrock/iam-policy.json"])
    # the role's account pins the inference-profile ARN
    assert policy["Statement"][0]["Resource"] == [
        f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{PROFILE}"
    ]


def test_hybrid_cascade_is_onprem_then_cloud_then_bedrock() -> None:
    config = gateway_yaml(build_tree(with_fallback(plans.hybrid())))
    assert config["models"]["llama-3.3-70b"]["cascade"] == ["onprem", "cloud", "bedrock"]
    assert [d["pool"] for d in config["endpoints"]["kubernetes"]] == ["cloud", "onprem"]


def test_gateway_accepts_the_cascade_config() -> None:
    from eksinfer.gateway.config import GatewayConfig, parse_config

    if "pools" not in GatewayConfig.model_fields:
        pytest.skip("the gateway's pools/models config (issue 13a's cascade) is not on this branch yet")
    config = parse_config(gateway_yaml(build_tree(with_fallback(plans.hybrid()))))
    assert config.models["llama-3.3-70b"].cascade == ["onprem", "cloud", "bedrock"]


@pytest.mark.parametrize(
    "plan", [plans.tier1(), plans.tier2(), plans.tier3(), plans.hybrid()], ids=lambda p: str(p.name)
)
def test_every_self_hosted_tier_of_the_cascade_is_a_discovered_pool(plan: Plan) -> None:
    """A cascade tier naming a pool no discovery fills would skip straight to Bedrock (a P/D plan's engines
    are in the `prefill` and `decode` pools, not `default`)."""
    config = gateway_yaml(build_tree(with_fallback(plan)))
    kube = config["endpoints"]["kubernetes"]
    discovered = {d.get("pool", "default") for d in (kube if isinstance(kube, list) else [kube])}
    for route in config["models"].values():
        self_hosted = [p for p in route["cascade"] if config["pools"][p]["kind"] == "vllm"]
        assert self_hosted
        assert set(self_hosted) <= discovered
    pd = config.get("disaggregation", {})
    for route_model, profile in pd.items():
        assert config["models"][route_model]["cascade"][0] == profile["decode_pool"]


def test_no_fallback_renders_no_bedrock() -> None:
    tree = build_tree(plans.tier2())
    assert "pools" not in gateway_yaml(tree)
    assert "annotations" not in account(tree)["metadata"]
    assert not [f for f in tree.files if f.startswith("bedrock/")]


@pytest.mark.parametrize(
    ("plan", "options", "field"),
    [
        (with_fallback(plans.tier2()), RenderOptions(bedrock_role_arn="role/gw"), "--bedrock-role-arn"),
        (plans.tier2(), RenderOptions(bedrock_role_arn=ROLE), "--bedrock-role-arn"),
        (with_fallback(plans.tier2(), "has space"), None, "fallback.model_id"),
        (with_fallback(plans.tier2(), region="Virginia"), None, "fallback.region"),
    ],
)
def test_bad_bedrock_input_names_the_field(plan: Plan, options: RenderOptions | None, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_tree(plan, options)
    assert err.value.field == field


def test_render_lints_clean_and_lint_flags_a_missing_association(tmp_path: Path) -> None:
    render_plan(with_fallback(plans.tier2()), tmp_path)
    assert [f.rule for f in lint_path(tmp_path)] == []
    (tmp_path / "bedrock" / "pod-identity.eksctl.yaml").unlink()
    findings = lint_path(tmp_path)
    assert [(f.rule, f.field) for f in findings] == [
        ("bedrock-without-identity", "data.gateway.yaml.pools.bedrock")
    ]


def test_cli_bedrock_role_arn(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(with_fallback(plans.tier2()).model_dump_json(), encoding="utf-8")
    runner = CliRunner()
    bad = runner.invoke(
        build_app(), ["render", str(plan_file), "-o", str(tmp_path / "a"), "--bedrock-role-arn", "x"]
    )
    assert isinstance(bad.exception, ConfigError)  # main.run prints it as one line naming the flag
    assert bad.exception.field == "--bedrock-role-arn"
    ok = runner.invoke(
        build_app(), ["render", str(plan_file), "-o", str(tmp_path / "b"), "--bedrock-role-arn", ROLE]
    )
    assert ok.exit_code == 0, ok.output
    assert ROLE in (tmp_path / "b" / "gateway" / "serviceaccount-llama-70b-gateway.yaml").read_text(
        encoding="utf-8"
    )
