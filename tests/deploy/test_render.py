"""Render every tier and node mode: golden files, schema validation, kustomize build, and the values that
matter checked by hand. Regenerate goldens with EKSINFER_UPDATE_GOLDEN=1 (then review the diff)."""

from __future__ import annotations

import os
import shutil
import subprocess
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
from tests.deploy import plans

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("EKSINFER_UPDATE_GOLDEN") == "1"
Obj = dict[str, Any]


def _flat(out_dir: Path) -> str:
    parts = []
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        parts.append(f"### {path.relative_to(out_dir)}\n{path.read_text(encoding='utf-8')}")
    return "".join(parts)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("render")
    out = {}
    for case, factory in plans.CASES.items():
        render_plan(factory(), root / case)
        out[case] = root / case
    return out


def _objs(tree: RenderedTree, kind: str) -> list[Obj]:
    return [o for o in tree.objects.values() if o["kind"] == kind]


@pytest.mark.parametrize("case", sorted(plans.CASES))
def test_golden(case: str, rendered: dict[str, Path]) -> None:
    text = _flat(rendered[case])
    golden = GOLDEN / f"{case}.txt"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    if not golden.exists():
        pytest.fail(f"no golden file {golden.name}; run with EKSINFER_UPDATE_GOLDEN=1")
    assert text == golden.read_text(encoding="utf-8"), (
        f"{case} differs from its golden; re-render with EKSINFER_UPDATE_GOLDEN=1 and review"
    )


@pytest.mark.parametrize("case", sorted(plans.CASES))
def test_everything_rendered_validates(case: str) -> None:
    tree = build_tree(plans.CASES[case]())
    assert [str(p) for p in validate_objects(tree.all_objects())] == []
    eksctl = [yaml.safe_load(t) for p, t in tree.files.items() if p.startswith("cluster/")]
    assert [str(p) for p in validate_objects(eksctl)] == []


@pytest.mark.parametrize("case", sorted(plans.CASES))
def test_rendered_tree_lints_clean(case: str, rendered: dict[str, Path]) -> None:
    assert [f"{f.rule} {f.object} {f.field}" for f in lint_path(rendered[case])] == []


@pytest.mark.parametrize(
    "case", ["tier1-auto-mode", "tier3-karpenter-pd", "hybrid-auto-mode", "dra-managed-node-group"]
)
def test_kustomize_builds(case: str, rendered: dict[str, Path]) -> None:
    tree_dir = rendered[case]
    kustomization = yaml.safe_load((tree_dir / "kustomization.yaml").read_text())
    object_files = {
        str(p.relative_to(tree_dir))
        for p in tree_dir.rglob("*.yaml")
        if p.parts[-2] not in ("helm", "cluster") and p.name != "kustomization.yaml"
    }
    assert set(kustomization["resources"]) == object_files
    if shutil.which("kubectl") is None:
        print(
            "kubectl not found: checked that kustomization.yaml lists every object file instead of "
            "building it"
        )
        return
    out = subprocess.run(
        ["kubectl", "kustomize", str(tree_dir)], capture_output=True, text=True, timeout=60, check=True
    )
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(docs) == len(object_files) + 1  # + the generated dashboard ConfigMap
    dash = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard"))
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_tier1_engine_by_hand() -> None:
    tree = build_tree(plans.tier1("auto-mode"))
    [dep] = [d for d in _objs(tree, "Deployment") if d["metadata"]["name"] == "qwen3-32b-engine"]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["vllm", "serve", "Qwen/Qwen3-32B-FP8"]
    args = c["args"]
    assert args[args.index("--prefix-caching-hash-algo") + 1] == "sha256_cbor"
    assert '"topic":"kv@$(POD_IP)@qwen3-32b"' in args[args.index("--kv-events-config") + 1]
    assert args.count("--tensor-parallel-size") == 1  # the plan's own flag is not duplicated
    assert {"name": "PYTHONHASHSEED", "value": "0"} in c["env"]
    # load 90 s -> budget max(600, 2*90+300) = 600 s = 60 x 10 s
    assert (c["startupProbe"]["periodSeconds"], c["startupProbe"]["failureThreshold"]) == (10, 60)
    # g6e.xlarge: 4 vCPU, 32 GiB; one GPU of one -> cpu floor(4*0.85)=3, memory floor(32*0.8)=25Gi
    assert c["resources"]["requests"] == {"cpu": "3", "memory": "25Gi", "nvidia.com/gpu": "1"}
    # every NodePool of the plan (primary, on-demand fallback) labels its nodes with the pool group
    assert pod["nodeSelector"] == {"eksinfer.io/gpu-pool": "qwen3-32b-gpu"}
    [pool] = _objs(tree, "NodePool")
    assert pool["spec"]["template"]["spec"]["nodeClassRef"] == {
        "group": "eks.amazonaws.com",
        "kind": "NodeClass",
        "name": "default",
    }
    assert not _objs(tree, "NodeClass")  # tier 1 uses the built-in class
    assert "driver" in yaml.safe_load(tree.files["helm/gpu-operator-values.yaml"])


def test_label_prefix_switches_with_mode() -> None:
    karp = build_tree(plans.tier1("karpenter"))
    [pool] = _objs(karp, "NodePool")
    keys = [r["key"] for r in pool["spec"]["template"]["spec"]["requirements"]]
    assert "karpenter.k8s.aws/instance-family" in keys
    assert not any(k.startswith("eks.amazonaws.com") for k in keys)
    [cls] = _objs(karp, "EC2NodeClass")
    assert cls["spec"]["amiSelectorTerms"] == [{"alias": "bottlerocket@latest"}]
    assert 'pull-mode = "parallel-pull-unpack"' in cls["spec"]["userData"]
    assert cls["spec"]["instanceStorePolicy"] == "RAID0"
    values = yaml.safe_load(karp.files["helm/gpu-operator-values.yaml"])
    # Bottlerocket NVIDIA ships its own plugin: the pool opts out, the operator keeps it for other nodes
    assert values["devicePlugin"]["enabled"] is True
    assert pool["spec"]["template"]["metadata"]["labels"]["nvidia.com/gpu.deploy.device-plugin"] == "false"


def test_gpu_operator_values_follow_the_design_on_auto_mode() -> None:
    """driver and toolkit off, the device plugin off only through the NodePool label, NFD/GFD/DCGM on,
    each value explained by a comment in the file."""
    tree = build_tree(plans.tier1("auto-mode"))
    text = tree.files["helm/gpu-operator-values.yaml"]
    auto = yaml.safe_load(text)
    assert (auto["driver"]["enabled"], auto["toolkit"]["enabled"]) == (False, False)
    assert auto["devicePlugin"]["enabled"] is True
    assert (auto["nfd"]["enabled"], auto["gfd"]["enabled"], auto["dcgmExporter"]["enabled"]) == (True,) * 3
    [pool] = _objs(tree, "NodePool")
    assert pool["spec"]["template"]["metadata"]["labels"]["nvidia.com/gpu.deploy.device-plugin"] == "false"
    assert "DCGM_FI_PROF_SM_ACTIVE" in auto["dcgmExporter"]["config"]["data"]
    lines = text.splitlines()
    for key in auto:
        i = lines.index(f"{key}:")
        assert lines[i - 1].startswith("# "), f"{key} has no comment above it"
    assert "allocatable 0" in text
    mng = build_tree(plans.tier1("managed-node-group"))
    assert "nvidia.com/gpu.deploy.device-plugin" not in mng.files["cluster/eksctl-nodegroup.yaml"]


def test_tier2_keda_and_limits() -> None:
    tree = build_tree(plans.tier2("karpenter"))
    [so] = _objs(tree, "ScaledObject")
    spec = so["spec"]
    # capacity per replica min(256, 120) = 120: running target floor(0.8*120)=96, queue ceil(12)=12
    thresholds = {t["name"]: t["metadata"]["threshold"] for t in spec["triggers"]}
    assert thresholds == {"running": "96", "queue": "12", "kv-cache": "0.8", "ttft": "2"}
    # the plan's 2 replicas are the floor (no single point of failure); 3 nodes x 8 GPUs / 4 per replica = 6
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 6)
    assert (
        spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
            "stabilizationWindowSeconds"
        ]
        == 1200
    )
    [pool] = _objs(tree, "NodePool")
    assert pool["spec"]["limits"] == {"nvidia.com/gpu": "24"}
    c = _objs(tree, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert "--kv-events-config" in c["args"]  # the plan routes KV-aware


def test_tier3_disaggregated_set() -> None:
    tree = build_tree(plans.tier3("karpenter"))
    [ds] = _objs(tree, "DisaggregatedSet")
    assert [r["name"] for r in ds["spec"]["roles"]] == ["prefill", "decode"]
    lwt = ds["spec"]["roles"][0]["spec"]["leaderWorkerTemplate"]
    assert (lwt["size"], lwt["restartPolicy"]) == (2, "RecreateGroupOnPodRestart")
    leader = lwt["leaderTemplate"]["spec"]["containers"][0]
    assert leader["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert leader["resources"]["limits"]["vpc.amazonaws.com/efa"] == "16"  # p5en: 16 EFA interfaces
    script = leader["args"][0]
    for piece in (
        "--tensor-parallel-size 8",
        "--pipeline-parallel-size 2",
        "--enable-expert-parallel",
        "NixlConnector",
        "--distributed-executor-backend ray",
        "leader --ray_cluster_size=$(LWS_GROUP_SIZE)",
    ):
        assert piece in script
    env = {e["name"]: e.get("value") for e in leader["env"]}
    assert env["FI_PROVIDER"] == "efa"
    assert env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "5600"
    targets = [so["spec"]["scaleTargetRef"] for so in _objs(tree, "ScaledObject")]
    assert targets == [
        {
            "apiVersion": "disaggregatedset.x-k8s.io/v1",
            "kind": "DisaggregatedSetRoleScaler",
            "name": f"kimi-k25-{r}",
        }
        for r in ("prefill", "decode")
    ]
    config = yaml.safe_load(_objs(tree, "ConfigMap")[0]["data"]["gateway.yaml"])
    found = config["endpoints"]["kubernetes"]  # both roles, each its own pool: the prefill pods serve
    assert [(d["pool"], "eksinfer.io/role=" + d["pool"] in d["label_selector"]) for d in found] == [
        ("decode", True),
        ("prefill", True),
    ]
    assert '"kv_role":"kv_producer"' in script  # prefill role; vLLM 0.32 deprecates kv_both for NIXL
    decode = ds["spec"]["roles"][1]["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
    assert '"kv_role":"kv_consumer"' in decode["args"][0]


def single_node_pd(provisioning: str = "managed-node-group") -> plans.Plan:
    """Tier 3 P/D with single-node TP 4 engines: separate Deployments that may land on different nodes."""
    doc = plans.tier3(provisioning).model_dump()
    engine = plans._engine(4, 1, precision="int4", ep=True, max_len=131072)
    doc["roles"] = [
        {"name": "prefill", "replicas": 1, "engine": engine},
        {"name": "decode", "replicas": 2, "engine": engine},
    ]
    return plans.Plan.model_validate(doc)


def test_single_node_pd_requests_efa_and_wires_both_roles(tmp_path: Path) -> None:
    tree = build_tree(single_node_pd())
    deployments = {
        d["metadata"]["labels"]["eksinfer.io/role"]: d
        for d in _objs(tree, "Deployment")
        if "eksinfer.io/role" in d["metadata"]["labels"]
    }
    assert set(deployments) == {"prefill", "decode"}
    for role, kv_role in (("prefill", "kv_producer"), ("decode", "kv_consumer")):
        pod = deployments[role]["spec"]["template"]
        c = pod["spec"]["containers"][0]
        # p5en: 16 EFA interfaces for 8 GPUs; a 4-GPU pod takes its half, so two pods still fit a node
        assert c["resources"]["limits"]["vpc.amazonaws.com/efa"] == "8"
        assert c["resources"]["requests"]["vpc.amazonaws.com/efa"] == "8"
        assert c["securityContext"]["capabilities"] == {"add": ["IPC_LOCK"]}
        args = c["args"]
        assert args[args.index("--kv-transfer-config") + 1] == (
            '{"kv_connector":"NixlConnector","kv_role":"' + kv_role + '"}'
        )
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert (env["VLLM_NIXL_SIDE_CHANNEL_HOST"], env["VLLM_NIXL_SIDE_CHANNEL_PORT"]) == (
            "$(POD_IP)",
            "5600",
        )
        assert {"name": "nixl", "containerPort": 5600} in c["ports"]
        assert pod["metadata"]["labels"]["eksinfer.io/serving"] == "true"
    # the prefill pods serve: a Service and a gateway discovery select them, as they do the decode pods
    services = {
        s["metadata"]["labels"]["eksinfer.io/role"]: s
        for s in _objs(tree, "Service")
        if "eksinfer.io/role" in s["metadata"]["labels"]
    }
    cm = next(o for o in _objs(tree, "ConfigMap") if o["metadata"]["name"].endswith("-gateway"))
    config = yaml.safe_load(cm["data"]["gateway.yaml"])
    for found in config["endpoints"]["kubernetes"]:
        wanted = dict(kv.split("=") for kv in found["label_selector"].split(","))
        matching = [
            r
            for r, d in deployments.items()
            if wanted.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matching == [found["pool"]]
        assert services[found["pool"]]["spec"]["selector"].items() <= wanted.items()
    [group] = [
        yaml.safe_load(t)["managedNodeGroups"][0] for p, t in tree.files.items() if p.startswith("cluster/")
    ]
    assert group["efaEnabled"] is True
    render_plan(single_node_pd(), tmp_path / "pd")
    assert [f"{f.rule} {f.object}" for f in lint_path(tmp_path / "pd")] == []


def test_round_robin_plan_has_no_kv_plumbing_and_snapshot_option() -> None:
    doc = plans.tier1("karpenter").model_dump()
    doc["routing"] = {"strategy": "round-robin", "gateway_preset": "round-robin"}
    tree = build_tree(
        plans.Plan.model_validate(doc), RenderOptions(image_snapshot_id="snap-0123456789abcdef0")
    )
    c = _objs(tree, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert "--kv-events-config" not in c["args"]
    assert "--prefix-caching-hash-algo" not in c["args"]
    assert "PYTHONHASHSEED" not in {e["name"] for e in c["env"]}
    config = yaml.safe_load(_objs(tree, "ConfigMap")[0]["data"]["gateway.yaml"])
    assert "kv_events_port" not in config["endpoints"]["kubernetes"]
    assert config["routing"]["preset"] == "round-robin"
    [cls] = _objs(tree, "EC2NodeClass")
    assert cls["spec"]["blockDeviceMappings"][1]["ebs"]["snapshotID"] == "snap-0123456789abcdef0"
    assert "instanceStorePolicy" not in cls["spec"]  # RAID0 would move containerd off the pre-pulled volume


def test_tier3_two_lws_backend() -> None:
    tree = build_tree(plans.tier3("karpenter"), RenderOptions(pd_backend="lws"))
    assert [o["metadata"]["name"] for o in _objs(tree, "LeaderWorkerSet")] == [
        "kimi-k25-prefill",
        "kimi-k25-decode",
    ]
    assert not _objs(tree, "DisaggregatedSet")
    assert [str(p) for p in validate_objects(tree.all_objects())] == []


def test_managed_node_group_mig_dra_hybrid() -> None:
    mng = build_tree(plans.tier1("managed-node-group"))
    assert not _objs(mng, "NodePool")
    group = yaml.safe_load(mng.files["cluster/eksctl-nodegroup.yaml"])["managedNodeGroups"][0]
    assert group["tags"]["k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"] == "1"
    mig = build_tree(plans.mig())
    [cls] = _objs(mig, "EC2NodeClass")
    assert cls["spec"]["amiSelectorTerms"] == [{"alias": "al2023@latest"}]
    assert (
        _objs(mig, "NodePool")[0]["spec"]["template"]["metadata"]["labels"]["nvidia.com/mig.config"]
        == "all-3g.40gb"
    )
    values = yaml.safe_load(mig.files["helm/gpu-operator-values.yaml"])
    assert values["migManager"]["enabled"]
    assert values["devicePlugin"]["enabled"]
    assert values["mig"] == {"strategy": "single"}
    dra = build_tree(plans.dra())
    [rct] = _objs(dra, "ResourceClaimTemplate")
    assert rct["spec"]["spec"]["devices"]["requests"][0]["exactly"]["count"] == 4
    c = _objs(dra, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert c["resources"]["claims"] == [{"name": "gpus"}]
    assert yaml.safe_load(dra.files["helm/cluster-autoscaler-values.yaml"])["extraArgs"][
        "enable-dynamic-resource-allocation"
    ]
    hybrid = build_tree(plans.hybrid())
    onprem = next(d for d in _objs(hybrid, "Deployment") if d["metadata"]["name"].endswith("-onprem"))
    assert onprem["spec"]["template"]["spec"]["nodeSelector"] == {"eks.amazonaws.com/compute-type": "hybrid"}
    assert onprem["spec"]["replicas"] == 1
    # 4 GPUs (TP 4) on an on-prem host: 4 x 4 cores, max(32, 4 x 24) GiB
    assert onprem["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"] == "96Gi"
    [ds] = _objs(hybrid, "DaemonSet")
    assert ds["spec"]["template"]["spec"]["nodeSelector"] == {"eks.amazonaws.com/compute-type": "hybrid"}


def test_gateway_config_is_accepted_by_the_gateway() -> None:
    from eksinfer.gateway.config import parse_config

    for case, pools in (("tier1-auto-mode", 1), ("tier3-karpenter-pd", 2)):  # P/D: prefill + decode
        tree = build_tree(plans.CASES[case]())
        cm = next(o for o in _objs(tree, "ConfigMap") if o["metadata"]["name"].endswith("-gateway"))
        config = parse_config(yaml.safe_load(cm["data"]["gateway.yaml"]))
        assert len(config.endpoints.kubernetes) == pools
        assert all(d.kv_events_port == 5557 for d in config.endpoints.kubernetes)


def test_hybrid_gateway_discovers_each_pool_on_its_own() -> None:
    """The cloud and on-prem engines land in two gateway pools, each selector matching only its pods."""
    from eksinfer.gateway.config import parse_config

    tree = build_tree(plans.hybrid())
    cm = next(o for o in _objs(tree, "ConfigMap") if o["metadata"]["name"].endswith("-gateway"))
    config = parse_config(yaml.safe_load(cm["data"]["gateway.yaml"]))
    assert [d.pool for d in config.endpoints.kubernetes] == ["cloud", "onprem"]
    for found in config.endpoints.kubernetes:
        wanted = dict(kv.split("=") for kv in found.label_selector.split(","))
        matching = [
            d["metadata"]["name"]
            for d in _objs(tree, "Deployment")
            if wanted.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matching) == 1, (found.pool, matching)
        assert matching[0].endswith("-onprem") == (found.pool == "onprem")


def test_s3_streaming_option() -> None:
    opts = RenderOptions(model_s3_uri="s3://models/qwen3-32b")
    tree = build_tree(plans.tier1("auto-mode"), opts)
    c = _objs(tree, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][2] == "s3://models/qwen3-32b"
    assert "runai_streamer" in c["args"]
    assert not _objs(tree, "PersistentVolumeClaim")
    assert [str(p) for p in validate_objects(tree.all_objects())] == []


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (
            lambda: plans.Plan.model_validate(
                {
                    **plans.mig().model_dump(),
                    "nodes": {**plans.mig().nodes.model_dump(), "provisioning": "auto-mode"},
                }
            ),
            "nodes.mig_profile",
        ),
        (
            lambda: plans.Plan.model_validate(
                {
                    **plans.dra().model_dump(),
                    "nodes": {**plans.dra().nodes.model_dump(), "provisioning": "karpenter"},
                }
            ),
            "nodes.needs_dra",
        ),
    ],
)
def test_render_refuses_what_the_mode_cannot_do(factory: Any, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_tree(factory())
    assert err.value.field == field


@pytest.mark.parametrize("name", ["Qwen3", "a" * 41, "bad_name", "-x"])
def test_render_refuses_names_that_break_object_names(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_tree(plans.Plan.model_validate({**plans.tier1().model_dump(), "name": name}))
    assert err.value.field == "name"


def test_render_refuses_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        render_plan(plans.tier1(), tmp_path)
    render_plan(plans.tier1(), tmp_path / "tree")
    render_plan(plans.tier2(), tmp_path / "tree")  # re-render replaces an earlier render
    assert not list((tmp_path / "tree").rglob("*qwen3*"))


def test_cli_render(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plans.tier2().model_dump_json())
    result = CliRunner().invoke(
        build_app(), ["render", str(plan_file), "-o", str(tmp_path / "out"), "-n", "llm"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "kustomization.yaml").exists()
    dep = yaml.safe_load((tmp_path / "out" / "engines" / "deployment-llama-70b-engine.yaml").read_text())
    assert dep["metadata"]["namespace"] == "llm"
    plan_file.write_text('{"name": "x"}')
    result = CliRunner().invoke(build_app(), ["render", str(plan_file), "-o", str(tmp_path / "o2")])
    assert result.exit_code != 0


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("tier", ["tier1", "tier2", "tier3"])
def test_committed_examples_are_current(tier: str, tmp_path: Path) -> None:
    """examples/ must equal a fresh render of its plan.json (scripts/render-examples.sh regenerates both)."""
    folder = EXAMPLES / tier
    plan = plans.Plan.model_validate_json((folder / "plan.json").read_text())
    assert plan.tier == int(tier[-1])
    render_plan(plan, tmp_path / tier)
    fresh = _flat(tmp_path / tier)
    committed = "".join(
        f"### {p.relative_to(folder)}\n{p.read_text(encoding='utf-8')}"
        for p in sorted(q for q in folder.rglob("*") if q.is_file() and q.name != "plan.json")
    )
    assert fresh == committed, f"examples/{tier} is stale: run scripts/render-examples.sh"
    assert lint_path(folder) == []
