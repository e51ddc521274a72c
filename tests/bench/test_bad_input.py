"""Unwritable output paths and non-finite numbers fail before the run, in one line naming the flag.

Before the fix these ran the whole benchmark and then printed a traceback (IsADirectoryError,
FileExistsError, FileNotFoundError), losing what was measured. The target here is a closed port: the
check comes first, so no server is needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EKSINFER = [sys.executable, "-m", "eksinfer.cli.main"]


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["-o", "."], "--output: . is a folder"),
        (["-o", "/proc/eksinfer/r.json"], "--output: cannot create /proc/eksinfer"),
        (["-o", "/proc/r.json"], "--output: cannot write in /proc"),
        (["--plots", "afile"], "--plots: afile is a file"),
        (["--plots", "afile/sub"], "--plots: cannot create afile/sub"),
    ],
)
def test_unwritable_outputs_fail_before_the_run(tmp_path: Path, flags: list[str], names: str) -> None:
    (tmp_path / "afile").write_text("x")
    args = ["bench", "-t", "http://127.0.0.1:1", "-m", "m", "-n", "1", "--no-progress", *flags]
    proc = subprocess.run([*EKSINFER, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert names in lines[0]


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--rate", "inf"], "rate: Input should be a finite number"),
        (["--rate", "1", "--burstiness", "inf"], "burstiness: Input should be a finite number"),
        (["--timeout", "inf"], "timeout_s: Input should be a finite number"),
        (["--duration", "inf"], "duration_s: Input should be a finite number"),
    ],
)
def test_non_finite_numbers_are_refused(flags: list[str], names: str) -> None:
    # Before the fix --rate inf and --timeout inf were accepted and --burstiness inf crashed the arrival
    # generator with a traceback.
    args = ["bench", "-t", "http://127.0.0.1:1", "-m", "m", "-n", "1", "--no-progress", *flags]
    proc = subprocess.run([*EKSINFER, *args], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert names in lines[0]
