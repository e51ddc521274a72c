"""`eksinfer sim` as a process: starts, serves, stops on SIGTERM; bad flags give one line and exit 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.waiting import DEADLINE_S, until_sync

CMD = [sys.executable, "-m", "eksinfer.cli.main", "sim"]


@pytest.mark.slow
def test_serves_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [
            *CMD,
            "--port",
            "0",
            "--time-scale",
            "0",
            "--num-gpu-blocks-override",
            "64",
            "--served-model-name",
            "tiny",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("engine 0: http://127.0.0.1:"), line
        url = line.split()[2].rstrip(",")
        r = httpx.post(
            url + "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2}, timeout=10
        )
        assert r.status_code == 200
        assert r.json()["usage"]["completion_tokens"] == 2
        metrics = httpx.get(url + "/metrics", timeout=10).text
        assert 'vllm:cache_config_info{block_size="16"' in metrics
        assert 'num_gpu_blocks="64"' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=DEADLINE_S)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0


def test_bad_flag_is_one_line() -> None:
    out = subprocess.run([*CMD, "--block-size", "0"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == "error: --block-size: must be one of 1, 8, 16, 32, 64, 128, 256 (vLLM's choices)"
    )
    out = subprocess.run(
        [*CMD, "--kv-events-config", '{"hwm": "x"}'], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "error: --kv-events-config.hwm: bad value 'x'"


@pytest.mark.slow
def test_stops_when_the_parent_that_asked_is_killed(tmp_path: Path) -> None:
    """`eksinfer up` sets EKSINFER_EXIT_WITH_PARENT for its simulator: killed outright (SIGKILL), it cannot
    stop the simulator, which notices the re-parenting and exits instead of holding its ports."""
    log = tmp_path / "sim.log"
    sim = " ".join([*CMD, "--port", "0", "--time-scale", "0", "--num-gpu-blocks-override", "64"])
    script = f"EKSINFER_EXIT_WITH_PARENT=$$ {sim} > {log} 2>&1 & echo $!; wait"
    shell = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True)
    assert shell.stdout is not None
    sim_pid = int(shell.stdout.readline())
    shell.stdout.close()
    try:
        until_sync(lambda: log.exists() and "engine 0:" in log.read_text(), what="the simulator started")
        shell.kill()
        shell.wait()
        until_sync(lambda: not Path(f"/proc/{sim_pid}").exists(), what="the simulator exited")
        assert "is gone; stopping" in log.read_text()
    finally:
        if Path(f"/proc/{sim_pid}").exists():
            os.kill(sim_pid, signal.SIGKILL)
