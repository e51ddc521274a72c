"""Bad input files through the installed entry point: one `error:` line naming the file or field, exit 2.

Each case printed a traceback before its fix: a binary (non-UTF-8) file raised UnicodeDecodeError, and an
HF config.json with a zero head count or a wrong-typed optional count raised ZeroDivisionError/ValueError."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EKSINFER = [sys.executable, "-m", "eksinfer.cli.main"]
BINARY = b"\x00\x01\xff\xfe"
HF_BASE = {
    "model_type": "llama",
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "vocab_size": 32000,
    "intermediate_size": 14336,
}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EKSINFER, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def _one_error_line(proc: subprocess.CompletedProcess[str], names: str) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert names in lines[0]


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["gateway", "--config", "bin.yaml"], "--config"),
        (["bench", "--config", "bin.yaml"], "bin.yaml"),
        (["plan", "--model-config", "bin.yaml"], "--model-config"),
        (["plan", "--model", "llama-3.1-8b", "--prices", "bin.yaml"], "--prices"),
        (["render", "bin.yaml", "-o", "out"], "PLAN"),
        (["bench", "compare", "bin.yaml", "bin.yaml"], "bin.yaml"),
    ],
)
def test_binary_files_are_one_line(tmp_path: Path, args: list[str], names: str) -> None:
    (tmp_path / "bin.yaml").write_bytes(BINARY)
    _one_error_line(_run(args, tmp_path), names)


def test_lint_reports_a_binary_manifest_as_unreadable(tmp_path: Path) -> None:
    (tmp_path / "bin.yaml").write_bytes(BINARY)
    proc = _run(["lint", "bin.yaml"], tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "unreadable-manifest" in proc.stdout
    assert "not UTF-8" in proc.stdout


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ({"num_attention_heads": 0}, "num_attention_heads: must be at least 1"),
        ({"num_hidden_layers": -3}, "num_hidden_layers: must be at least 1"),
        ({"hidden_size": 0}, "hidden_size: must be at least 1"),
        ({"num_local_experts": "x", "num_experts_per_tok": 2}, "num_local_experts: expected a number"),
        ({"kv_lora_rank": 512, "qk_rope_head_dim": "x"}, "qk_rope_head_dim: expected a number"),
        (
            {"quantization_config": {"quant_method": "awq", "group_size": "g"}},
            "group_size: expected a number",
        ),
    ],
)
def test_hf_config_bad_fields_name_the_field(tmp_path: Path, override: dict[str, object], names: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**HF_BASE, **override}))
    _one_error_line(_run(["plan", "--model-config", "config.json"], tmp_path), names)
