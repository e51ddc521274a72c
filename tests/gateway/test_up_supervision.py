"""`eksinfer up` supervises what it starts: a simulator that dies stops the stack with a message and a
non-zero exit, a port already taken fails the start, and no log file is left in the temp folder.

Reproductions from the hardening probe: with its simulator killed, `up` answered 503 forever while /health
said 200; with its simulator port taken, it printed "eksinfer is up" and proxied to the port's owner."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from eksinfer.stack import REPLAY_OFFSET
from tests.gateway.test_up import free_block
from tests.waiting import until_sync

pytestmark = pytest.mark.timeout(90)


def start_up(tmp_path: Path, port: int, sim_port: int, kv_port: int) -> tuple[subprocess.Popen[bytes], Path]:
    cmd = [sys.executable, "-m", "eksinfer.cli.main", "up", "--replicas", "1", "--time-scale", "0"]
    cmd += ["--port", str(port), "--sim-port", str(sim_port), "--kv-events-port", str(kv_port)]
    out = tmp_path / "up.out"
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    env = {**os.environ, "NO_COLOR": "1", "TMPDIR": str(temp)}
    with out.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
    return proc, out


def wait_for_banner(proc: subprocess.Popen[bytes], out: Path) -> None:
    def printed() -> bool:
        assert proc.poll() is None, out.read_text()
        return "Ctrl-C stops" in out.read_text()

    until_sync(printed, what="eksinfer up printing its banner")


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the simulator's pid through /proc")
def test_a_dead_simulator_stops_up_with_a_message(tmp_path: Path) -> None:
    port, sim_port, kv_port = free_block(1), free_block(1), free_block(1, REPLAY_OFFSET)
    proc, out = start_up(tmp_path, port, sim_port, kv_port)
    try:
        wait_for_banner(proc, out)
        sims = children(proc.pid)
        assert len(sims) == 1, sims
        os.kill(sims[0], signal.SIGKILL)
        assert proc.wait(timeout=30) == 4, out.read_text()
        text = out.read_text()
        assert "error: the simulator exited with code -9" in text
        assert "Traceback" not in text
        assert list((tmp_path / "tmp").glob("eksinfer-sim-*")) == []  # the log file is removed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_taken_simulator_port_fails_the_start(tmp_path: Path) -> None:
    port, sim_port, kv_port = free_block(1), free_block(1), free_block(1, REPLAY_OFFSET)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", sim_port))
        squatter.listen()
        proc, out = start_up(tmp_path, port, sim_port, kv_port)
        try:
            assert proc.wait(timeout=30) == 2
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = out.read_text()
    assert f"error: --sim-port: port {sim_port} (engine 0) is already in use" in text
    assert "eksinfer is up" not in text
    assert "Traceback" not in text


def test_up_leaves_no_log_file_after_ctrl_c(tmp_path: Path) -> None:
    port, sim_port, kv_port = free_block(1), free_block(1), free_block(1, REPLAY_OFFSET)
    proc, out = start_up(tmp_path, port, sim_port, kv_port)
    try:
        wait_for_banner(proc, out)
        assert len(list((tmp_path / "tmp").glob("eksinfer-sim-*.log"))) == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, out.read_text()
        assert list((tmp_path / "tmp").glob("eksinfer-sim-*")) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
