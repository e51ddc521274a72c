"""`eksinfer autoscale` through the entry point: one error line naming the flag, and a small run's files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eksinfer.autoscale.recommendation import Recommendation
from eksinfer.planner.schema import Plan

EKSINFER = [sys.executable, "-m", "eksinfer.cli.main"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EKSINFER, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture
def plan_file(tmp_path: Path, plan_70b: Plan) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(plan_70b.model_dump_json())
    return path


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], "--trace: give exactly one of --trace FILE and --generate"),
        (["--generate", "weekly"], "--generate: must be one of diurnal, bursty"),
        (["--generate", "diurnal", "--requests", "0"], "--requests: must be >= 1"),
        (["--generate", "diurnal", "--policy", "hpa"], "--policy: unknown policy 'hpa'"),
        (["--generate", "diurnal", "--target-attainment", "2"], "--target-attainment"),
        (["--trace", "missing.jsonl"], "--trace: cannot read"),
    ],
)
def test_usage_errors_are_one_line(tmp_path: Path, plan_file: Path, args: list[str], words: str) -> None:
    proc = _run(["autoscale", str(plan_file), *args], tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert words in lines[0]


def test_bad_trace_line_names_the_field(tmp_path: Path, plan_file: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"arrival_s": 0, "input_tokens": 10, "output_tokens": 2}\n{"arrival_s": 1}\n')
    proc = _run(["autoscale", str(plan_file), "--trace", str(trace)], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: input_tokens: {trace} line 2: must be an integer >= 1, got None"


def test_a_small_run_writes_summary_recommendation_and_plot(tmp_path: Path, plan_file: Path) -> None:
    out = tmp_path / "out"
    args = ["--generate", "bursty", "--requests", "400", "--duration-h", "1", "--policy", "static"]
    proc = _run(
        ["autoscale", str(plan_file), *args, "--policy", "slo-predictive", "-o", str(out), "--json"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert [r["policy"] for r in printed["rows"]][1] == "slo-predictive:0.8"
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary) == 2
    assert len(summary[0]["attainment_per_hour"]) == 1
    rec = Recommendation.model_validate_json((out / "recommendation.json").read_text())
    assert rec.policy in {row["policy"] for row in summary}
    assert set(rec.evidence.compared) == {row["policy"] for row in summary}
    assert (out / "autoscale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "trace.jsonl").read_text().count("\n") == rec.evidence.requests
    rendered = _run(
        [
            "render",
            str(plan_file),
            "-o",
            str(tmp_path / "deploy"),
            "--autoscale",
            str(out / "recommendation.json"),
        ],
        tmp_path,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert (tmp_path / "deploy" / "autoscaling").is_dir()
