"""NaN and infinity on the command line: one line naming the flag, exit 2.

Before the fix `--requests-per-s nan` crashed in the replica count (ValueError traceback) and `--budget nan`
reported an infeasible plan (exit 3) instead of a bad flag."""

from __future__ import annotations

import subprocess
import sys

import pytest

EKSINFER = [sys.executable, "-m", "eksinfer.cli.main"]


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--requests-per-s", "nan"),
        ("--requests-per-s", "inf"),
        ("--ttft", "nan"),
        ("--tpot", "inf"),
        ("--budget", "nan"),
    ],
)
def test_plan_rejects_non_finite_numbers(flag: str, value: str) -> None:
    args = ["plan", "--model", "llama-3.1-8b", flag, value]
    proc = subprocess.run([*EKSINFER, *args], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {flag}: must be a finite number > 0"]
