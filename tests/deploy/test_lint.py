"""One manifest that triggers each lint rule and one that does not, plus the CLI's output and exit codes."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from eksinfer.cli.main import build_app
from eksinfer.deploy.lint import RULES, lint_docs, lint_path
from eksinfer.deploy.lint.manifests import REFUSED, UNREADABLE, Doc
from eksinfer.deploy.tool_parsers import parsers_for

Obj = dict[str, Any]
TOOL_FLAGS = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
TOL = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def engine(
    tp: int = 4,
    gpus: int = 4,
    model: str = "meta-llama/Llama-3.3-70B-Instruct",
    extra: list[str] | None = None,
    *,
    tool_flags: bool = True,
) -> Obj:
    """A hand-written vLLM Deployment that passes every rule (with `tool_flags`: the model's tool and
    reasoning parsers)."""
    parsers = parsers_for(model) if tool_flags else None
    if parsers is not None:
        extra = [*(extra or []), "--enable-auto-tool-choice", "--tool-call-parser", parsers.tool]
        if parsers.reasoning:
            extra += ["--reasoning-parser", parsers.reasoning]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "llm"},
        "spec": {
            "selector": {"matchLabels": {"app": "llm"}},
            "template": {
                "metadata": {"labels": {"app": "llm"}},
                "spec": {
                    "tolerations": copy.deepcopy(TOL),
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "vllm/vllm-openai:v0.32.0",
                            "command": ["vllm", "serve", model],
                            "args": ["--tensor-parallel-size", str(tp), *(extra or [])],
                            "env": [{"name": "HF_HOME", "value": "/models/hf"}],
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                            "startupProbe": {
                                "httpGet": {"path": "/health", "port": 8000},
                                "periodSeconds": 10,
                                "failureThreshold": 90,
                            },
                            "volumeMounts": [
                                {"name": "dshm", "mountPath": "/dev/shm"},
                                {"name": "cache", "mountPath": "/models"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                        {"name": "cache", "persistentVolumeClaim": {"claimName": "models"}},
                    ],
                },
            },
        },
    }


def lws(size: int = 2, efa: bool = True, policy: str | None = None) -> Obj:
    tpl = engine(
        tp=8,
        gpus=8,
        model="meta-llama/Llama-3.1-405B-Instruct",
        extra=["--pipeline-parallel-size", str(size)],
    )["spec"]["template"]
    if efa:
        tpl["spec"]["containers"][0]["resources"]["limits"]["vpc.amazonaws.com/efa"] = "32"
    lwt: Obj = {"size": size, "leaderTemplate": tpl, "workerTemplate": copy.deepcopy(tpl)}
    if policy:
        lwt["restartPolicy"] = policy
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "big"},
        "spec": {"leaderWorkerTemplate": lwt},
    }


def pod(o: Obj) -> Obj:
    return o["spec"]["template"]["spec"]


def ctr(o: Obj) -> Obj:
    return pod(o)["containers"][0]


def nodepool(group: str = "eks.amazonaws.com", **spec_over: Any) -> Obj:
    kind = "NodeClass" if group == "eks.amazonaws.com" else "EC2NodeClass"
    prefix = "eks.amazonaws.com" if group == "eks.amazonaws.com" else "karpenter.k8s.aws"
    out: Obj = {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": "gpu"},
        "spec": {
            "template": {
                "spec": {
                    "nodeClassRef": {"group": group, "kind": kind, "name": "default"},
                    "requirements": [
                        {"key": f"{prefix}/instance-family", "operator": "In", "values": ["p5"]}
                    ],
                    "taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}],
                }
            },
            "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "600s"},
        },
    }
    out["spec"].update(spec_over)
    return out


def labelled_pool() -> Obj:
    """An Auto Mode NodePool whose nodes opt out of the GPU Operator's device plugin."""
    out = nodepool()
    out["spec"]["template"]["metadata"] = {"labels": {"nvidia.com/gpu.deploy.device-plugin": "false"}}
    return out


def gateway_cm(preset: str = "kv-aware") -> Obj:
    cfg = {
        "endpoints": {"kubernetes": {"namespace": "x", "label_selector": "app=llm"}},
        "routing": {"preset": preset},
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "gw"},
        "data": {"gateway.yaml": yaml.safe_dump(cfg)},
    }


def bedrock_gateway(*, irsa: bool = False, pod_identity: bool = False) -> list[Obj]:
    """A gateway ConfigMap with a Bedrock pool, the Deployment mounting it, its ServiceAccount, and the
    identity wiring asked for (IRSA annotation, or an eksctl Pod Identity association)."""
    cfg = {
        "endpoints": {"kubernetes": {"namespace": "ns", "label_selector": "app=llm"}},
        "pools": {"bedrock": {"kind": "bedrock", "region": "us-east-1", "models": {"m": "meta.x-v1:0"}}},
        "models": {"m": {"cascade": ["default", "bedrock"]}},
    }
    meta = {"name": "gw", "namespace": "ns"}
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {"gateway.yaml": yaml.safe_dump(cfg)},
    }
    template = {
        "spec": {
            "serviceAccountName": "gw",
            "containers": [{"name": "gateway", "image": "eksinfer:1"}],
            "volumes": [{"name": "config", "configMap": {"name": "gw"}}],
        }
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {"template": template},
    }
    account: Obj = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta)}
    if irsa:
        account["metadata"]["annotations"] = {
            "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/gw"
        }
    out = [cm, deployment, account]
    if pod_identity:
        assoc = {"namespace": "ns", "serviceAccountName": "gw", "permissionPolicy": {}}
        out.append({"apiVersion": "eksctl.io/v1alpha5", "kind": "ClusterConfig", "metadata": {"name": "c"},
                    "iam": {"podIdentityAssociations": [assoc]}})  # fmt: skip
    return out


KV_OK = ["--kv-events-config", '{"enable_kv_cache_events":true}', "--prefix-caching-hash-algo", "sha256_cbor"]


def kv_engine(extra: list[str] | None = None, seed: str | None = "0") -> Obj:
    e = engine(extra=[*KV_OK, *(extra or [])])
    if seed is not None:
        ctr(e)["env"].append({"name": "PYTHONHASHSEED", "value": seed})
    return e


def pd_engine(role: str, *, efa: bool = True) -> Obj:
    """A P/D engine: vLLM's NixlConnector as kv_producer (prefill) or kv_consumer (decode)."""
    kv_role = {"prefill": "kv_producer", "decode": "kv_consumer"}[role]
    kv = json.dumps({"kv_connector": "NixlConnector", "kv_role": kv_role})
    e = engine(extra=["--kv-transfer-config", kv])
    e["metadata"]["name"] = f"llm-{role}"
    pod_labels = {"app": "llm", "eksinfer.io/role": role, "eksinfer.io/serving": "true"}
    e["spec"]["template"]["metadata"]["labels"] = pod_labels
    e["spec"]["selector"]["matchLabels"] = pod_labels
    if efa:
        ctr(e)["resources"]["limits"]["vpc.amazonaws.com/efa"] = "4"
    return e


def pd_gateway_cm(*roles: str, profile: bool = True) -> Obj:
    """An eksinfer gateway ConfigMap discovering each of `roles` as its own pool."""
    found = [
        {
            "namespace": "x",
            "label_selector": f"app=llm,eksinfer.io/role={r},eksinfer.io/serving=true",
            "pool": r,
        }
        for r in roles
    ]
    cfg: Obj = {"endpoints": {"kubernetes": found}, "routing": {"preset": "load"}}
    if profile:
        cfg["disaggregation"] = {"llm": {"prefill_pool": "prefill", "decode_pool": "decode"}}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "gw"},
        "data": {"gateway.yaml": yaml.safe_dump(cfg)},
    }


def so(
    target: str = "llm",
    window: int | None = 1200,
    min_r: int = 1,
    cooldown: int | None = None,
    up_period: int = 600,
) -> Obj:
    spec: Obj = {
        "scaleTargetRef": {"name": target},
        "minReplicaCount": min_r,
        "maxReplicaCount": 4,
        "triggers": [
            {"type": "prometheus", "metadata": {"query": "q", "threshold": "1", "serverAddress": "http://p"}}
        ],
    }
    if window is not None:
        behavior = {
            "scaleDown": {"stabilizationWindowSeconds": window},
            "scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": up_period}]},
        }
        spec["advanced"] = {"horizontalPodAutoscalerConfig": {"behavior": behavior}}
    if cooldown is not None:
        spec["cooldownPeriod"] = cooldown
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "llm"},
        "spec": spec,
    }


def mutate(obj: Obj, fn: Callable[[Obj], Any]) -> Obj:
    out = copy.deepcopy(obj)
    fn(out)
    return out


def device_plugin_ds(node_selector: dict[str, str] | None = None) -> Obj:
    spec: Obj = {"containers": [{"name": "p", "image": "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"}]}
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "ndp"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": spec},
        },
    }


def dra_engine() -> Obj:
    def fn(o: Obj) -> None:
        ctr(o)["resources"] = {"claims": [{"name": "gpus"}]}
        pod(o)["resourceClaims"] = [{"name": "gpus", "resourceClaimTemplateName": "gpus4"}]

    return mutate(engine(), fn)


RCT = {
    "apiVersion": "resource.k8s.io/v1",
    "kind": "ResourceClaimTemplate",
    "metadata": {"name": "gpus4"},
    "spec": {
        "spec": {
            "devices": {
                "requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com", "count": 4}}]
            }
        }
    },
}

# rule id -> (manifests that trigger it, manifests that do not)
CASES: dict[str, tuple[list[Obj], list[Obj]]] = {
    "device-plugin-on-auto-mode": (
        [
            nodepool(),
            {"driver": {"enabled": False}, "toolkit": {"enabled": False}, "dcgmExporter": {"enabled": True}},
            device_plugin_ds(),
        ],
        [
            labelled_pool(),
            {"driver": {"enabled": False}, "devicePlugin": {"enabled": True}},
            device_plugin_ds({"eks.amazonaws.com/compute-type": "hybrid"}),
        ],
    ),
    "device-plugin-off-cluster-wide": (
        [labelled_pool(), {"driver": {"enabled": False}, "devicePlugin": {"enabled": False}}],
        [
            labelled_pool(),
            {"driver": {"enabled": False}, "devicePlugin": {"enabled": True}},
            # with DRA the DRA driver advertises GPUs, so no plugin anywhere is right
            dra_engine(),
            RCT,
            {"driver": {"enabled": False}, "devicePlugin": {"enabled": False}},
        ],
    ),
    "gpu-operator-nfd-off": (
        [{"driver": {"enabled": False}, "devicePlugin": {"enabled": True}, "nfd": {"enabled": False}}],
        [{"driver": {"enabled": False}, "devicePlugin": {"enabled": True}, "nfd": {"enabled": True}}],
    ),
    "dra-on-karpenter": ([nodepool("karpenter.k8s.aws"), dra_engine(), RCT], [dra_engine(), RCT]),
    "tp-without-shm": (
        [mutate(engine(), lambda o: ctr(o)["volumeMounts"].pop(0))],
        [mutate(engine(tp=1, gpus=1), lambda o: ctr(o)["volumeMounts"].pop(0)), engine()],
    ),
    "probe-kills-loading-model": (
        [
            mutate(
                engine(),
                lambda o: ctr(o).update(
                    startupProbe={"httpGet": {"path": "/health", "port": 8000}, "failureThreshold": 30}
                ),
            ),
            mutate(
                engine(),
                lambda o: (
                    ctr(o).pop("startupProbe"),
                    ctr(o).update(livenessProbe={"httpGet": {"path": "/health", "port": 8000}}),
                ),
            ),
        ],
        [engine(), mutate(engine(), lambda o: ctr(o).pop("startupProbe"))],
    ),
    "missing-gpu-toleration": (
        [nodepool(), mutate(engine(), lambda o: pod(o).pop("tolerations"))],
        [nodepool(), engine()],
    ),
    "gpu-count-mismatch": (
        [
            engine(tp=4, gpus=8),
            lws(size=2, efa=True)
            | {"spec": {"leaderWorkerTemplate": {**lws()["spec"]["leaderWorkerTemplate"], "size": 3}}},
        ],
        [engine(tp=4, gpus=4), lws(size=2), dra_engine(), RCT],
    ),
    "tools-without-parser": (
        [
            engine(model="Qwen/Qwen3-32B", tool_flags=False),
            engine(model="Qwen/Qwen3-32B", tool_flags=False, extra=TOOL_FLAGS),  # reasoning parser missing
            engine(model="zai-org/GLM-5", tool_flags=False, extra=["--reasoning-parser", "glm45"]),
        ],
        [
            engine(
                model="Qwen/Qwen3-32B", tool_flags=False, extra=[*TOOL_FLAGS, "--reasoning-parser", "qwen3"]
            ),
            engine(model="acme/unknown-family-7b", tool_flags=False),  # not in the table: nothing to say
        ],
    ),
    "moe-without-expert-parallel": (
        [
            engine(tp=8, gpus=8, model="deepseek-ai/DeepSeek-V3"),
            engine(tp=8, gpus=8, model="Qwen/Qwen3-30B-A3B"),
        ],
        [
            engine(tp=8, gpus=8, model="deepseek-ai/DeepSeek-V3", extra=["--enable-expert-parallel"]),
            engine(tp=8, gpus=8),
        ],
    ),
    "multi-node-without-efa": ([lws(efa=False)], [lws(efa=True), engine()]),
    "pd-without-efa": (
        [pd_engine("prefill", efa=False), pd_engine("decode")],
        [pd_engine("prefill"), pd_engine("decode"), engine()],
    ),
    "pd-gateway-misses-a-role": (
        [pd_engine("prefill"), pd_engine("decode"), pd_gateway_cm("decode", profile=False)],
        [pd_engine("prefill"), pd_engine("decode"), pd_gateway_cm("decode", "prefill"), engine()],
    ),
    "replicas-fight-keda": (
        [mutate(engine(), lambda o: o["spec"].update(replicas=3)), so()],
        [
            engine(),
            so(),
            # a fixed-size workload no ScaledObject targets may keep its replicas
            mutate(engine(), lambda o: (o["spec"].update(replicas=3), o["metadata"].update(name="fixed"))),
        ],
    ),
    "keda-faster-than-nodes": (
        [engine(), so(window=None), so(up_period=15) | {"metadata": {"name": "fast-up"}}],
        [engine(), so(window=1200, up_period=300), so(target="cpu-only-app", window=None)],
    ),
    "no-model-cache": (
        [
            mutate(engine(), lambda o: pod(o)["volumes"].__setitem__(1, {"name": "cache", "emptyDir": {}})),
            mutate(engine(), lambda o: ctr(o).update(env=[], volumeMounts=ctr(o)["volumeMounts"][:1])),
        ],
        [
            engine(),
            mutate(engine(), lambda o: ctr(o)["command"].__setitem__(2, "s3://bucket/llama")),
            engine(extra=["--load-format", "runai_streamer"]),
        ],
    ),
    "prefix-caching-off-behind-kv-router": (
        [gateway_cm(), kv_engine(extra=["--no-enable-prefix-caching"])],
        [gateway_cm(), kv_engine(), kv_engine(extra=["--enable-prefix-caching"])],
    ),
    "kv-events-missing": ([gateway_cm(), engine(extra=KV_OK[2:])], [gateway_cm(), kv_engine()]),
    "kv-hash-not-reproducible": (
        [gateway_cm(), kv_engine(seed=None)],
        [gateway_cm(), kv_engine(), mutate(kv_engine(), lambda o: o["metadata"].update(name="llm2"))],
    ),
    "gpu-request-without-limit": (
        [mutate(engine(), lambda o: ctr(o)["resources"].update(requests={"nvidia.com/gpu": "4"}, limits={}))],
        [engine(), mutate(engine(), lambda o: ctr(o)["resources"].update(requests={"nvidia.com/gpu": "4"}))],
    ),
    "unpinned-engine-image": (
        [
            mutate(engine(), lambda o: ctr(o).update(image="vllm/vllm-openai:latest")),
            mutate(engine(), lambda o: ctr(o).update(image="vllm/vllm-openai")),
        ],
        [engine(), mutate(engine(), lambda o: ctr(o).update(image="registry:5000/vllm@sha256:" + "a" * 64))],
    ),
    "lws-no-group-restart": ([lws(policy="Default")], [lws(), lws(policy="RecreateGroupOnPodRestart")]),
    "gpu-nodepool-consolidates-busy-nodes": (
        [
            nodepool(
                disruption={"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "1m"}
            ),
            nodepool(disruption={"consolidateAfter": "1m"}),
        ],
        [
            nodepool(),
            nodepool(
                disruption={
                    "consolidateAfter": "1m",
                    "budgets": [{"nodes": "0", "reasons": ["Underutilized"]}],
                }
            ),
        ],
    ),
    "wrong-label-prefix": (
        [
            mutate(
                nodepool("karpenter.k8s.aws"),
                lambda o: o["spec"]["template"]["spec"]["requirements"][0].update(
                    key="eks.amazonaws.com/instance-family"
                ),
            ),
            nodepool(),
            mutate(
                engine(), lambda o: pod(o).update(nodeSelector={"karpenter.k8s.aws/instance-family": "p5"})
            ),
        ],
        [
            nodepool("karpenter.k8s.aws"),
            mutate(
                engine(), lambda o: pod(o).update(nodeSelector={"karpenter.k8s.aws/instance-family": "p5"})
            ),
        ],
    ),
    "crd-rule-violation": (
        [
            mutate(
                nodepool(),
                lambda o: o["spec"]["template"]["spec"]["requirements"].append(
                    {"key": "karpenter.sh/nodepool", "operator": "In", "values": []}
                ),
            ),
            so(min_r=6),
        ],
        [nodepool(), so()],
    ),
    "schema-violation": (
        [
            mutate(engine(), lambda o: o["spec"].update(replicas="two")),
            mutate(so(), lambda o: o["spec"].update(minReplicas=1)),
        ],
        [engine(), so(), {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}],
    ),
    "bedrock-without-identity": (
        bedrock_gateway(),
        [*bedrock_gateway(irsa=True), *bedrock_gateway(pod_identity=True)[3:], gateway_cm()],
    ),
    "unreadable-manifest": ([{UNREADABLE: "mapping values are not allowed here"}], [engine()]),
    "refused-manifest": ([{REFUSED: "x.yaml expands to more than 1,000,000 values"}], [engine()]),
    "mig-on-auto-mode": (
        [
            mutate(
                nodepool(),
                lambda o: o["spec"]["template"].update(
                    metadata={"labels": {"nvidia.com/mig.config": "all-1g.10gb"}}
                ),
            )
        ],
        [
            mutate(
                nodepool("karpenter.k8s.aws"),
                lambda o: o["spec"]["template"].update(
                    metadata={"labels": {"nvidia.com/mig.config": "all-1g.10gb"}}
                ),
            )
        ],
    ),
}


def _lint(objs: list[Obj], rule: str) -> list[str]:
    docs = [Doc(f"m{i}.yaml", o) for i, o in enumerate(objs)]
    return [f"{f.object}:{f.field}" for f in lint_docs(docs, only={rule})]


def test_every_rule_has_a_case() -> None:
    assert set(CASES) == set(RULES)


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_triggers(rule: str) -> None:
    bad, _ = CASES[rule]
    assert _lint(bad, rule), f"{rule} did not fire"


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_quiet_on_good_manifest(rule: str) -> None:
    _, good = CASES[rule]
    assert _lint(good, rule) == []


def test_baseline_engine_is_clean_for_all_rules() -> None:
    assert lint_docs([Doc("e.yaml", engine()), Doc("n.yaml", nodepool()), Doc("s.yaml", so())]) == []


def test_finding_names_object_field_why_and_fix() -> None:
    [f] = lint_docs(
        [Doc("e.yaml", mutate(engine(), lambda o: ctr(o)["volumeMounts"].pop(0)))], only={"tp-without-shm"}
    )
    assert (f.file, f.object, f.field, f.severity) == (
        "e.yaml",
        "Deployment/llm",
        "spec.template.spec.containers[0].volumeMounts",
        "error",
    )
    assert "/dev/shm" in f.why
    assert "emptyDir" in f.fix


def test_lws_fields_point_into_the_template() -> None:
    found = _lint([lws(efa=False)], "multi-node-without-efa")
    assert found == [
        "LeaderWorkerSet/big:spec.leaderWorkerTemplate.leaderTemplate.spec.containers[0].resources.limits",
        "LeaderWorkerSet/big:spec.leaderWorkerTemplate.workerTemplate.spec.containers[0].resources.limits",
    ]


def _write(tmp_path: Path, objs: list[Obj]) -> Path:
    (tmp_path / "all.yaml").write_text(yaml.safe_dump_all(objs), encoding="utf-8")
    return tmp_path


def test_cli_json_and_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad"
    bad.mkdir()
    _write(bad, [nodepool(), mutate(engine(), lambda o: pod(o).pop("tolerations")), so(window=None)])
    result = runner.invoke(build_app(), ["lint", str(bad), "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["errors"] == 1
    assert doc["warnings"] == 2  # keda-faster-than-nodes: scale-down window and scale-up pace
    assert {f["rule"] for f in doc["findings"]} == {"missing-gpu-toleration", "keda-faster-than-nodes"}
    good = tmp_path / "good"
    good.mkdir()
    _write(good, [nodepool(), engine(), so()])
    result = runner.invoke(build_app(), ["lint", str(good)])
    assert result.exit_code == 0
    assert "0 error(s), 0 warning(s)" in result.stdout


@pytest.mark.parametrize(
    ("objs", "fires"),
    [
        ([gateway_cm("round-robin"), engine(extra=["--no-enable-prefix-caching"])], False),
        ([gateway_cm("load"), engine()], False),
        (
            [
                {
                    "apiVersion": "inference.networking.k8s.io/v1",
                    "kind": "InferencePool",
                    "metadata": {"name": "p"},
                },
                engine(extra=["--no-enable-prefix-caching"]),
            ],
            True,
        ),
    ],
)
def test_kv_router_detection(objs: list[Obj], fires: bool) -> None:
    rules = {"prefix-caching-off-behind-kv-router", "kv-events-missing"}
    assert bool(lint_docs([Doc("m.yaml", o) for o in objs], only=rules)) is fires


def test_cli_warnings_only_exit_zero(tmp_path: Path) -> None:
    _write(tmp_path, [engine(), so(window=None)])
    result = CliRunner().invoke(build_app(), ["lint", str(tmp_path)])
    assert result.exit_code == 0
    assert "WARNING [keda-faster-than-nodes]" in result.stdout


def test_entry_point_exit_status(tmp_path: Path) -> None:
    """The real entry point (not CliRunner) exits 1 on errors: the status must survive main.run."""
    import subprocess
    import sys

    _write(tmp_path, [mutate(engine(), lambda o: pod(o).pop("tolerations"))])
    cmd = [sys.executable, "-m", "eksinfer.cli.main", "lint", str(tmp_path), "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["errors"] == 1


def test_unparsable_file_is_reported_and_the_rest_still_linted(tmp_path: Path) -> None:
    (tmp_path / "template.yaml").write_text("replicas: {{ .Values.replicas }}\nname: [\n", encoding="utf-8")
    _write(tmp_path, [mutate(engine(), lambda o: pod(o).pop("tolerations"))])
    findings = lint_path(tmp_path)
    assert {(f.rule, f.file) for f in findings} == {
        ("unreadable-manifest", "template.yaml"),
        ("missing-gpu-toleration", "all.yaml"),
    }


def test_keda_rule_names_scale_up_and_scale_down() -> None:
    fields = {
        f.field.rsplit(".", 2)[-2]
        for f in lint_docs([Doc("e.yaml", engine()), Doc("s.yaml", so(window=None))])
    }
    assert fields == {"scaleDown", "scaleUp"}
    [f] = lint_docs([Doc("e.yaml", engine()), Doc("s.yaml", so(up_period=15))])
    assert f.field.endswith("scaleUp.policies")
    assert "every 15 s" in f.why


def test_model_read_from_entrypoint_arguments() -> None:
    """The vllm-openai image's entrypoint is `vllm serve`: args may start with the model."""

    def fn(o: Obj) -> None:
        ctr(o).pop("command")
        ctr(o)["args"] = ["deepseek-ai/DeepSeek-V3", "--tensor-parallel-size", "8", *TOOL_FLAGS]
        ctr(o)["resources"]["limits"]["nvidia.com/gpu"] = "8"

    [f] = lint_docs([Doc("e.yaml", mutate(engine(), fn))])
    assert f.rule == "moe-without-expert-parallel"
    assert "deepseek-ai/deepseek-v3" in f.why


def test_pd_gateway_without_a_profile_is_flagged_where_the_gateway_has_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both roles discovered but no `disaggregation:` profile wiring them: flagged when the gateway can be
    configured for P/D (eksinfer.gateway.pd), not before."""
    from eksinfer.deploy.lint import rules_pd

    objs = [pd_engine("prefill"), pd_engine("decode"), pd_gateway_cm("decode", "prefill", profile=False)]
    monkeypatch.setattr(rules_pd, "gateway_speaks_pd", lambda: True)
    assert _lint(objs, "pd-gateway-misses-a-role") == ["ConfigMap/gw:data.disaggregation"]
    wired = [pd_engine("prefill"), pd_engine("decode"), pd_gateway_cm("decode", "prefill")]
    assert _lint(wired, "pd-gateway-misses-a-role") == []
    monkeypatch.setattr(rules_pd, "gateway_speaks_pd", lambda: False)
    assert _lint(objs, "pd-gateway-misses-a-role") == []
