"""Command-line parse errors through the installed entry point: one line, exit 2, never a traceback.

typer >= 0.22 raises its vendored click's exceptions (not `click.ClickException`s); these cases caught the
entry point printing tracebacks for them."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from eksinfer.cli.main import build_app

EKSINFER = [sys.executable, "-m", "eksinfer.cli.main"]


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["render"], "PLAN.json"),
        (["lint"], "DIR"),
        (["plan", "--model"], "--model"),
        (["plan", "--no-such-flag"], "--no-such-flag"),
        (["sim", "--port", "abc"], "--port"),
        (["bench", "--concurrency", "x"], "--concurrency"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_parse_errors_are_one_line_naming_the_culprit(args: list[str], names: str) -> None:
    proc = subprocess.run([*EKSINFER, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert names in lines[0]
    assert "Traceback" not in proc.stderr


def test_lint_lists_its_rules_without_a_folder() -> None:
    proc = subprocess.run([*EKSINFER, "lint", "--rules"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rules = [line.split()[0] for line in proc.stdout.splitlines()]
    assert "tp-without-shm" in rules
    assert len(rules) == len(set(rules)) >= 20


@pytest.mark.parametrize("command", [c.name for c in build_app().registered_commands])
def test_every_command_prints_its_help(command: str) -> None:
    """Help text goes through rich markup: a stray [/...] in an option's help crashed `render --help`."""
    result = CliRunner().invoke(build_app(), [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
