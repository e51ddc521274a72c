"""`eksinfer plan` through typer's CliRunner (formats) and the installed console script (exit codes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from eksinfer.cli.main import build_app
from eksinfer.planner import Plan

RUNNER = CliRunner()
EKSINFER = [sys.executable, "-m", "eksinfer.cli.main"]


def _invoke(*args: str) -> str:
    result = RUNNER.invoke(build_app(), ["plan", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_json_is_a_valid_plan() -> None:
    doc = json.loads(_invoke("--model", "qwen3-32b", "--precision", "fp8", "--json"))
    plan = Plan.model_validate(doc)
    assert plan.tier == 1
    assert doc["schema_version"] == "eksinfer.plan/v1"


def test_yaml_matches_json() -> None:
    args = ("--model", "llama-3.3-70b", "--requests-per-s", "3", "--preset", "batch")
    from_yaml = yaml.safe_load(_invoke(*args, "--yaml"))
    from_json = json.loads(_invoke(*args, "--json"))
    assert from_yaml == from_json
    assert from_yaml["slo"] == {"preset": "batch", "ttft_s": 5.0, "tpot_s": 0.15}


def test_table_shows_choices_why_and_alternatives() -> None:
    out = _invoke("--model", "llama-3.1-8b", "--ttft", "1.5")
    assert "tier 1" in out
    assert "vllm serve" in out
    assert "why" in out
    assert "alternatives" in out
    assert "$" in out


def test_flags_reach_the_plan(tmp_path: Path) -> None:
    doc = json.loads(
        _invoke(
            "--model", "kimi-k2.5", "--families", "p5", "--input-tokens", "2000", "--output-tokens", "500",
            "--concurrency", "16", "--max-nodes", "8", "--json",
        )
    )  # fmt: skip
    assert doc["tier"] == 3
    assert doc["instance"]["type"] == "p5.48xlarge"
    assert doc["traffic"]["concurrency"] == 16
    assert doc["nodes"]["total_nodes"] >= 2


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EKSINFER, "plan", *args], capture_output=True, text=True, timeout=60, check=False)


def test_unknown_model_is_one_line_exit_2() -> None:
    proc = _run("--model", "llama-3.1-7b")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "did you mean llama-3.1-8b" in lines[0]
    assert proc.stdout == ""


def test_infeasible_is_exit_3_and_names_what_binds() -> None:
    proc = _run("--model", "llama-3.3-70b", "--budget", "500")
    assert proc.returncode == 3
    assert proc.stderr.startswith("error: budget:")
    assert "nearest feasible" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bad_flag_values_exit_2() -> None:
    assert _run("--model", "llama-3.1-8b", "--concurrency", "0").returncode == 2
    assert _run("--model", "llama-3.1-8b", "--on-prem", "H100").returncode == 2
    proc = _run("--model", "llama-3.1-8b", "--model-config", "x.json")
    assert proc.returncode == 2
    assert "exactly one" in proc.stderr


def test_unknown_family_and_on_prem_gpu_name_the_flag() -> None:
    proc = _run("--model", "llama-3.1-8b", "--families", "p9")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --families: unknown p9")
    proc = _run("--model", "llama-3.1-8b", "--on-prem", "H300:4")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --on-prem: unknown GPU 'H300'")


def test_render_writes_a_kustomize_tree(tmp_path: Path) -> None:
    pytest.importorskip("eksinfer.deploy.render", reason="the deploy renderer is not in this build")
    out = tmp_path / "manifests"
    _invoke("--model", "llama-3.1-8b", "--json", "--render", str(out))
    assert (out / "kustomization.yaml").is_file()


def test_new_flags_reach_the_plan_and_bad_values_name_the_flag() -> None:
    doc = json.loads(
        _invoke(
            "--model", "llama-3.1-8b", "--families", "g6e", "--region", "eu-central-1",
            "--kv-cache-dtype", "fp8", "--capacity-type", "spot", "--json",
        )
    )  # fmt: skip
    assert doc["instance"]["region"] == "eu-central-1"
    assert doc["instance"]["spot_price_date"] == "2026-08-21"
    assert doc["roles"][0]["engine"]["kv_cache_dtype"] == "fp8"
    assert doc["ground"]["measured"] is False  # g-family
    for args, flag in (
        (("--region", "mars-1"), "--region"),
        (("--kv-cache-dtype", "int8"), "--kv-cache-dtype"),
        (("--precision", "fp2"), "--precision"),
    ):
        proc = _run("--model", "llama-3.1-8b", *args)
        assert proc.returncode == 2
        assert proc.stderr.startswith(f"error: {flag}"), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


MISTRAL_7B = {  # mistralai/Mistral-7B-Instruct-v0.3 config.json, without _name_or_path (as downloaded)
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 14336,
    "vocab_size": 32768,
    "max_position_embeddings": 32768,
}


def test_model_config_with_hf_id_and_served_name(tmp_path: Path) -> None:
    """The folder name must not become the checkpoint (`vllm serve cfg`): --hf-id names it, --served-name
    names what clients send; the rendered engine serves exactly those."""
    pytest.importorskip("eksinfer.deploy.render", reason="the deploy renderer is not in this build")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(MISTRAL_7B))
    doc = json.loads(_invoke("--model-config", str(tmp_path / "cfg"), "--json"))
    assert doc["model"]["hf_id"] == "cfg"  # what the issue saw: named after the folder
    out = tmp_path / "tree"
    args = ["--model-config", str(tmp_path / "cfg"), "--hf-id", "mistralai/Mistral-7B-Instruct-v0.3"]
    doc = json.loads(_invoke(*args, "--served-name", "mistral-7b", "--json", "--render", str(out)))
    assert (doc["model"]["hf_id"], doc["model"]["id"]) == ("mistralai/Mistral-7B-Instruct-v0.3", "mistral-7b")
    [dep] = [p for p in (out / "engines").glob("deployment-*.yaml")]
    text = dep.read_text()
    assert "- mistralai/Mistral-7B-Instruct-v0.3" in text
    assert "--served-model-name\n        - mistral-7b" in text


def test_hf_id_needs_model_config() -> None:
    proc = _run("--model", "llama-3.1-8b", "--hf-id", "meta-llama/Llama-3.1-8B")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --hf-id: only with --model-config")


def test_phase_from_prints_what_changes_and_bad_phase_flags_are_one_line() -> None:
    out = _invoke(
        "--model", "llama-3.1-8b", "--phase", "2", "--from", "1",
        "--without", "bedrock-fallback,cascade,hybrid-nodes",
    )  # fmt: skip
    tail = out[out.index("phase 1 -> 2") :]
    assert "+ karpenter" in tail
    assert "- auto-mode" in tail
    assert "~ provisioning: auto-mode -> karpenter" in tail
    assert "added    nodes/ec2nodeclass-llama-3-1-8b-gpu.yaml" in tail
    assert "added    helm/gpu-operator-values.yaml" in tail
    for args, flag in (
        (("--from", "1"), "--from"),
        (("--phase", "2", "--from", "2"), "--from"),
        (("--phase", "2", "--from", "0"), "--from"),
        (("--phase", "2.5"), "--phase"),
        (("--phase", "2", "--without", "karpenter"), "--without"),
    ):
        proc = _run("--model", "llama-3.1-8b", *args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"error: {flag}"), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_phase_from_with_json_keeps_stdout_a_plan_and_prints_changes_on_stderr() -> None:
    proc = _run(
        "--model", "llama-3.1-8b", "--phase", "4", "--from", "2", "--json",
        "--without", "bedrock-fallback,cascade,hybrid-nodes",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    plan = Plan.model_validate_json(proc.stdout)
    assert plan.stack is not None
    assert plan.stack.phase == "4"
    assert "phase 2 -> 4" in proc.stderr
    assert "+ slo-autoscaling" in proc.stderr


GPT_OSS_CONFIG = Path(__file__).parents[1] / "catalog" / "data" / "gpt-oss-120b.config.json"


def test_a_local_gpt_oss_config_plans_like_the_catalog_entry() -> None:
    # the public openai/gpt-oss-120b config.json (tests/catalog/data): sliding window, sinks, MXFP4 experts
    args = ("--families", "p5", "--requests-per-s", "1", "--json")
    local = json.loads(
        _invoke("--model-config", str(GPT_OSS_CONFIG), "--hf-id", "openai/gpt-oss-120b", *args)
    )
    catalog = json.loads(_invoke("--model", "gpt-oss-120b", *args))
    for doc in (local, catalog):
        engine = doc["roles"][0]["engine"]
        assert (doc["tier"], engine["precision"], engine["tensor_parallel_size"]) == (1, "mxfp4", 1)
        assert engine["max_model_len"] <= 131072
    assert local["roles"][0]["engine"] == catalog["roles"][0]["engine"]
    proc = _run("--model", "llama-3.1-8b", "--precision", "mxfp4")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --precision: mxfp4 needs a checkpoint")
