"""The status page in a real headless Chromium (Debian's `chromium`, as scripts/ensure-deb.sh installs
it), driven over the DevTools protocol by Playwright (`executable_path`: Playwright never downloads a
browser), against `eksinfer up` itself: two simulated engines behind the gateway, as a developer runs them.

The page is loaded once and kept open while the test sends load through the gateway with the openai SDK; the
numbers the page's own script renders (total requests, per-endpoint requests, TTFT percentiles, the recent
decisions table) must change from their idle values to the load's counts. Nothing is faked but the GPUs.

`EKSINFER_UPDATE_SCREENSHOT=1` also writes the loaded page to docs/img/status.png (the picture in
docs/gateway.md), like the golden files' regeneration flag.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from eksinfer.lifecycle import PARENT_ENV
from tests.gateway.test_up import REPLAY_OFFSET, free_block
from tests.waiting import until_sync

CHROMIUM = shutil.which("chromium")
ENABLED = os.environ.get("EKSINFER_BROWSER") == "1"  # `make test-status-page` sets it
try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:  # the `browser` extra is installed by `make test-status-page` only (Playwright: 165 MiB)
    sync_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not ENABLED, reason="status page in Chromium: run `make test-status-page`"),
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (run scripts/ensure-deb.sh)"),
    pytest.mark.skipif(sync_playwright is None, reason="playwright not installed (pip install '.[browser]')"),
]

WAIT_S = 60.0  # generous: two Python servers and a browser start on a busy 2-core machine
REQUESTS = 24
# The flags a CI container needs: no sandbox (no user namespaces), no GPU, no background traffic.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "status.png"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[int]:
    """`eksinfer up --replicas 2` on free ports; yields the gateway port."""
    gw, sim, kv = free_block(1), free_block(2), free_block(2, REPLAY_OFFSET)
    cmd = [sys.executable, "-m", "eksinfer.cli.main", "up", "--replicas", "2", "--port", str(gw)]
    cmd += ["--sim-port", str(sim), "--kv-events-port", str(kv)]
    log = tmp_path / "up.log"
    with log.open("wb") as sink:
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
            try:
                return httpx.get(f"http://127.0.0.1:{gw}/ready", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        until_sync(ready, WAIT_S, "eksinfer up ready")
        yield gw
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does: gateway first, then the engines
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _load(gateway: int, requests: int) -> None:
    """Four at a time, two system prompts (two prefix groups, so the kv-aware router uses both engines)."""
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway}/v1", api_key="none", max_retries=0)
    model = _model(gateway)

    def one(i: int) -> None:
        system = f"You are assistant number {i % 2}; you answer briefly and precisely. " * 10
        messages: Any = [{"role": "system", "content": system}, {"role": "user", "content": f"question {i}"}]
        answer = client.chat.completions.create(model=model, messages=messages, max_tokens=8)
        assert answer.choices[0].message.content

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(requests)))
    client.close()


def _model(gateway: int) -> str:
    models: list[str] = httpx.get(f"http://127.0.0.1:{gateway}/ready", timeout=5).json()["models"]
    return models[0]


def _text(page: Page, selector: str) -> str:
    return (page.text_content(selector) or "").strip()


def _endpoint_requests(page: Page) -> list[int]:
    cells = page.locator("tr[data-endpoint] td.requests").all_text_contents()
    return [int(c) for c in cells if c.strip().isdigit()]


def test_status_page_numbers_change_under_load(stack: int) -> None:
    assert sync_playwright is not None
    assert CHROMIUM is not None
    url = f"http://127.0.0.1:{stack}/status"
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 860},
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(url)
            # Idle: the first poll rendered zero requests and both endpoints, up, with no TTFT yet.
            until_sync(lambda: _text(page, "#requests-total") == "0", WAIT_S, "first poll rendered")
            until_sync(lambda: len(_endpoint_requests(page)) == 2, WAIT_S, "two endpoint rows")
            assert _text(page, "#ttft-p50") == "-"
            assert page.locator("td.health").all_text_contents() == ["up", "up"]
            assert _endpoint_requests(page) == [0, 0]

            _load(stack, REQUESTS)

            until_sync(lambda: _text(page, "#requests-total") == str(REQUESTS), WAIT_S, "requests rendered")
            until_sync(lambda: sum(_endpoint_requests(page)) == REQUESTS, WAIT_S, "per-endpoint rows")
            p50, p90 = _text(page, "#ttft-p50"), _text(page, "#ttft-p90")
            assert p50.endswith(" ms"), p50
            assert p90.endswith(" ms"), p90
            assert 0 < float(p50[:-3]) <= float(p90[:-3])
            assert _text(page, "#errors-total") == "0"
            hit = _text(page, "#hit-rate")
            assert hit.endswith(" %"), hit
            assert float(hit[:-2]) > 0  # the system prompts are shared: the router predicts hits
            rows = page.locator("#recent tr").count()
            assert rows == REQUESTS  # fewer than the 50 kept
            assert _text(page, "#error") == ""
            assert errors == []
            if os.environ.get("EKSINFER_UPDATE_SCREENSHOT") == "1":
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOT), full_page=False)
        finally:
            browser.close()
