"""The rendered PrometheusRule passes `promtool check rules`, and its alerts fire (and stay quiet) as the
hand-written unit tests in promtool/alerts_test.yaml expect. Skipped, with the reason printed, without
promtool (scripts/ensure-deb.sh installs Debian's `prometheus` package where it can)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from eksinfer.deploy.render import build_tree
from eksinfer.planner.schema import Plan
from tests.deploy import plans

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (run scripts/ensure-deb.sh or apt-get install prometheus)",
)


def _rules_file(tmp_path: Path, case: str) -> Path:
    return _write_rules(tmp_path, plans.CASES[case]())


def _write_rules(tmp_path: Path, plan: Plan) -> Path:
    tree = build_tree(plan)
    [rule] = [o for o in tree.objects.values() if o["kind"] == "PrometheusRule"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False), encoding="utf-8")
    return path


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("case", sorted(plans.CASES))
def test_check_rules(case: str, tmp_path: Path) -> None:
    rules = _rules_file(tmp_path, case)
    result = _promtool("check", "rules", str(rules), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests(tmp_path: Path) -> None:
    _rules_file(tmp_path, "tier1-auto-mode")
    shutil.copy(Path(__file__).parent / "promtool" / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    result = _promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cascade_rule_unit_tests(tmp_path: Path) -> None:
    """The share answered by Bedrock and its sustained-fallback alert (rendered only with a Bedrock tier)."""
    rules = _write_rules(tmp_path, plans.tier1("auto-mode", fallback=plans.QWEN_BEDROCK))
    assert _promtool("check", "rules", str(rules), cwd=tmp_path).returncode == 0
    shutil.copy(Path(__file__).parent / "promtool" / "cascade_test.yaml", tmp_path / "cascade_test.yaml")
    result = _promtool("test", "rules", "cascade_test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
