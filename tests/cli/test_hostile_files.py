"""Poisoned files and absurd numbers through the installed entry point: a bounded refusal in one line.

Reproductions from the hardening probe: a YAML "billion laughs" made `eksinfer lint` run 37 s and reach
6.2 GB before exiting 0; deep nesting and a non-UTF-8 tokenizer.json printed tracebacks; `plan` accepted
1e308 requests/s; `--endpoints` accepted port 99999. The subprocess runs under an address-space limit, so
an expansion that is no longer bounded fails with MemoryError (and a traceback) instead of passing slowly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.test_bad_files import EKSINFER, _one_error_line

MEMORY_LIMIT_BYTES = 3 * 1024**3  # the interpreter and its libraries need well under this

LAUGHS = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{cur}: &{cur} [{','.join([f'*{prev}'] * 9)}]"
            for prev, cur in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ]
)
# The same bomb inside a Deployment's container args, where a Kubernetes-aware walk meets it.
K8S_LAUGHS = (
    "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nx-anchors:\n"
    + "\n".join("  " + line for line in LAUGHS.splitlines())
    + "\nspec:\n  template:\n    spec:\n      containers:\n      - name: c\n        image: i\n"
    "        args: *i\n"
)


# The child limits its own address space, then runs the CLI (no preexec_fn: it is unsafe, and deprecated,
# in a test process that has threads).
LIMITED = (
    "import resource, runpy, sys; "
    f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT_BYTES}, {MEMORY_LIMIT_BYTES})); "
    "sys.argv = ['eksinfer', *sys.argv[1:]]; runpy.run_module('eksinfer.cli.main', run_name='__main__')"
)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", LIMITED, *args] if sys.platform == "linux" else [*EKSINFER, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("text", [LAUGHS, K8S_LAUGHS], ids=["plain", "kubernetes-shaped"])
def test_lint_refuses_a_billion_laughs(tmp_path: Path, text: str) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "bomb.yaml").write_text(text)
    proc = _run(["lint", "m"], tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[refused-manifest]" in proc.stdout
    assert "1,000,000 values" in proc.stdout


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["gateway", "--config", "f.yaml"], "--config"),
        (["plan", "--model", "llama-3.1-8b", "--prices", "f.yaml"], "--prices"),
        (["bench", "--config", "f.yaml"], "f.yaml"),
    ],
)
def test_yaml_files_with_a_billion_laughs_are_one_line(tmp_path: Path, args: list[str], names: str) -> None:
    (tmp_path / "f.yaml").write_text(LAUGHS)
    proc = _run(args, tmp_path)
    _one_error_line(proc, names)
    assert "1,000,000 values" in proc.stderr


@pytest.mark.parametrize(
    ("args", "file", "text"),
    [
        (["gateway", "--config", "f.yaml"], "f.yaml", "a: " + "[" * 5000 + "]" * 5000),
        (["gateway", "--config", "f.yaml"], "f.yaml", "a: " + "[" * 300 + "]" * 300),
        (["plan", "--model-config", "config.json"], "config.json", "[" * 100_000 + "]" * 100_000),
        (["plan", "--model-config", "config.json"], "config.json", '{"a": ' + "[" * 300 + "]" * 300 + "}"),
    ],
    ids=["yaml-5000", "yaml-300", "json-100000", "json-300"],
)
def test_deep_nesting_is_one_line(tmp_path: Path, args: list[str], file: str, text: str) -> None:
    (tmp_path / file).write_text(text)
    proc = _run(args, tmp_path)
    _one_error_line(proc, args[-2])
    assert "nested" in proc.stderr


def test_lint_refuses_deep_nesting(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000)
    (tmp_path / "m" / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    proc = _run(["lint", "m"], tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1
    assert proc.stdout.count("[refused-manifest]") == 2


def test_oversized_config_is_refused_unread(tmp_path: Path) -> None:
    with (tmp_path / "f.yaml").open("w") as f:
        f.write("server: {}\n# " + "x" * (17 * 1024**2) + "\n")
    proc = _run(["gateway", "--config", "f.yaml"], tmp_path)
    _one_error_line(proc, "--config")
    assert "refused" in proc.stderr


def test_non_utf8_tokenizer_json_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_bytes(b'{"version": "1.0", "model": "\xff\xfe"}')
    proc = _run(["sim", "--tokenizer", "tok", "--port", "0"], tmp_path)
    _one_error_line(proc, "--tokenizer")


def test_malformed_tokenizer_files_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": 3}))
    proc = _run(["sim", "--tokenizer", "tok", "--port", "0"], tmp_path)
    _one_error_line(proc, "--tokenizer")


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["plan", "--model", "llama-3.1-8b", "--requests-per-s", "1e308"], "--requests-per-s"),
        (
            ["plan", "--model", "llama-3.1-8b", "--requests-per-s", "1e308", "--max-nodes", "8"],
            "--requests-per-s",
        ),
        (["plan", "--model", "llama-3.1-8b", "--concurrency", "1000000000000"], "--concurrency"),
        (["plan", "--model", "llama-3.1-8b", "--input-tokens", "1000000000000"], "--input-tokens"),
        (["plan", "--model", "llama-3.1-8b", "--max-nodes", "1000000000"], "--max-nodes"),
        (["gateway", "--endpoints", "http://127.0.0.1:99999"], "99999"),
    ],
)
def test_numbers_past_what_can_be_served_are_refused(tmp_path: Path, args: list[str], flag: str) -> None:
    proc = _run(args, tmp_path)
    _one_error_line(proc, flag)
    assert "inf" not in proc.stderr.replace("info", "")
