"""`eksinfer render` with impossible plan numbers or an output it cannot write: one line, exit 2.

Before the fix a negative replica count rendered `replicas: -1`, gpus_per_replica 0 raised ZeroDivisionError
and an unwritable -o raised FileNotFoundError, both as tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EKSINFER = [sys.executable, "-m", "eksinfer.cli.main"]


@pytest.fixture(scope="module")
def plan_doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    proc = subprocess.run(
        [*EKSINFER, "plan", "--model", "llama-3.1-8b", "--json"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, object] = json.loads(proc.stdout)
    return doc


def _render(tmp_path: Path, doc: dict[str, object], out: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    cmd = [*EKSINFER, "render", "plan.json", "-o", out]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)


def _one_line(proc: subprocess.CompletedProcess[str], names: str) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert names in lines[0]


@pytest.mark.parametrize(
    ("where", "value", "names"),
    [
        (None, ("replicas", -1), "roles.0.replicas"),
        ("engine", ("gpus_per_replica", 0), "roles.0.engine.gpus_per_replica"),
        ("engine", ("tensor_parallel_size", 0), "roles.0.engine.tensor_parallel_size"),
        ("engine", ("gpu_memory_utilization", 7), "roles.0.engine.gpu_memory_utilization"),
        ("engine", ("block_size", 0), "roles.0.engine.block_size"),
    ],
)
def test_impossible_plan_numbers_name_the_field(
    tmp_path: Path, plan_doc: dict[str, object], where: str | None, value: tuple[str, object], names: str
) -> None:
    doc = json.loads(json.dumps(plan_doc))
    role = doc["roles"][0]
    (role[where] if where else role)[value[0]] = value[1]
    _one_line(_render(tmp_path, doc, "out"), names)
    assert not (tmp_path / "out").exists()


def test_unwritable_output_is_one_line(tmp_path: Path, plan_doc: dict[str, object]) -> None:
    _one_line(
        _render(tmp_path, plan_doc, "/proc/eksinfer-render"), "--output: cannot write /proc/eksinfer-render"
    )
