"""Extras: a command whose extra is missing says which one to install, and the gateway and simulator import
nothing from the heavy extras (plots, deploy, tokenizers). Missing modules are simulated with an import
blocker in a fresh interpreter, since the test venv has every extra installed."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from eksinfer.extras import FOR_COMMAND, PROVIDED_BY

ROOT = Path(__file__).resolve().parents[2]

BLOCKER = """
import sys
BLOCKED = set({blocked!r})
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".", 1)[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
"""


def _run(blocked: set[str], code: str) -> subprocess.CompletedProcess[str]:
    script = BLOCKER.format(blocked=sorted(blocked)) + code
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("argv", "blocked", "extra"),
    [
        (["gateway", "--endpoints", "http://127.0.0.1:9"], {"aiohttp"}, "gateway"),
        (["lint", "."], {"kubernetes_validate", "jsonschema"}, "deploy"),
    ],
)
def test_missing_extra_is_one_line_naming_it(argv: list[str], blocked: set[str], extra: str) -> None:
    proc = _run(blocked, f"sys.argv = ['eksinfer', *{argv!r}]\nfrom eksinfer.cli.main import run\nrun()\n")
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert f"pip install 'eksinfer[{extra}]'" in line
    assert "Traceback" not in proc.stderr


HEAVY = {
    "matplotlib",
    "numpy",
    "PIL",
    "jsonschema",
    "kubernetes_validate",
    "kubernetes",
    "tokenizers",
    "jinja2",
}


@pytest.mark.parametrize(
    "modules",
    [
        ["eksinfer.gateway.serve", "eksinfer.gateway.runtime", "eksinfer.cli.gateway"],
        ["eksinfer.sim.run", "eksinfer.sim.server", "eksinfer.cli.sim"],
    ],
)
@pytest.mark.slow
def test_gateway_and_sim_need_no_heavy_extra(modules: list[str]) -> None:
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "from eksinfer.gateway.config import parse_config\n"
    code += "from eksinfer.gateway.runtime import build_runtime\n"
    code += "build_runtime(parse_config({'endpoints': {'static': [{'url': 'http://127.0.0.1:9'}]}}))\n"
    proc = _run(HEAVY, code)
    assert proc.returncode == 0, proc.stderr


def test_extras_in_pyproject_match_the_hints() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    names = {e: " ".join(extras[e]).lower() for e in extras}
    module_to_dist = {
        "zmq": "pyzmq",
        "prometheus_client": "prometheus-client",
        "kubernetes_validate": "kubernetes-validate",
    }
    for module, extra in PROVIDED_BY.items():
        assert module_to_dist.get(module, module) in names[extra], (module, extra)
    for command, wanted in FOR_COMMAND.items():
        assert set(wanted.split(",")) <= set(extras), command
    base = " ".join(meta["dependencies"]).lower()
    for heavy in ("matplotlib", "kubernetes-validate", "jsonschema", "aiohttp"):
        assert heavy not in base


def test_doctor_without_its_client_names_the_doctor_extra(tmp_path: Path) -> None:
    argv = ["doctor", str(tmp_path)]
    proc = _run(
        {"kubernetes"}, f"sys.argv = ['eksinfer', *{argv!r}]\nfrom eksinfer.cli.main import run\nrun()\n"
    )
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "pip install 'eksinfer[doctor]'" in line
