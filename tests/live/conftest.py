"""Live tests against a real vLLM 0.32 (CPU build): run by `make test-live` (scripts/test-live.sh).

Every test here is marked `live` and skipped, with the reason printed, unless EKSINFER_LIVE=1 and the vLLM
venv (EKSINFER_LIVE_VENV, default .live/venv) exists. scripts/test-live.sh installs that venv, builds the tiny
model and starts the two servers, then exports:

    EKSINFER_LIVE_VENV     the venv with vllm importable (used for vllm_probe.py)
    EKSINFER_LIVE_MODEL    the tiny model directory (HF tokenizer + chat template)
    EKSINFER_LIVE_SERVERS  comma-separated `http-url|events-address|replay-address`, one per server
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIVE_DIR = ROOT / "tests" / "live"


@dataclass(frozen=True)
class LiveServer:
    url: str
    events: str
    replay: str

    @property
    def endpoint_id(self) -> str:
        """How the gateway names this endpoint (host:port of the URL)."""
        return self.url.split("://", 1)[-1].rstrip("/")


def _venv() -> Path:
    return Path(os.environ.get("EKSINFER_LIVE_VENV", ROOT / ".live" / "venv"))


def skip_reason() -> str | None:
    if os.environ.get("EKSINFER_LIVE") != "1":
        return "live test: set EKSINFER_LIVE=1 and run `make test-live` (needs a real vLLM)"
    if not (_venv() / "bin" / "python").exists():
        return f"live test: no vLLM venv at {_venv()} (run `make test-live` to install it)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = skip_reason()
    if reason is None:
        return
    for item in items:
        if LIVE_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def live_python() -> Path:
    return _venv() / "bin" / "python"


@pytest.fixture(scope="session")
def live_model() -> Path:
    path = Path(os.environ.get("EKSINFER_LIVE_MODEL", ROOT / ".live" / "tiny-llama"))
    if not (path / "tokenizer.json").exists():
        pytest.fail(f"EKSINFER_LIVE_MODEL={path} has no tokenizer.json")
    return path


@pytest.fixture(scope="session")
def live_servers() -> list[LiveServer]:
    raw = os.environ.get("EKSINFER_LIVE_SERVERS", "")
    servers = []
    for entry in filter(None, raw.split(",")):
        url, events, replay = entry.split("|")
        servers.append(LiveServer(url=url, events=events, replay=replay))
    if len(servers) < 2:
        pytest.fail("EKSINFER_LIVE_SERVERS must list two servers (scripts/test-live.sh sets it)")
    return servers
