"""Runtime lifecycle: background tasks owned and cancelled, and `eksinfer gateway` as a process (workers)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from eksinfer.errors import ConfigError
from eksinfer.gateway.config import parse_config
from eksinfer.gateway.endpoints import EndpointSpec
from eksinfer.gateway.runtime import build_runtime
from tests.gateway.test_proxy_fakes import FakeEngine, RoundRobinRouter
from tests.gateway.test_up import free_block
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)


def test_workers_need_a_fixed_port() -> None:
    with pytest.raises(ConfigError, match=r"^server: .*fixed port"):
        parse_config({"server": {"port": 0, "workers": 2}})


async def test_stop_cancels_every_background_task() -> None:
    engine = await FakeEngine().start()
    config = parse_config(
        {"server": {"host": "127.0.0.1", "port": 0}, "endpoints": {"static": [{"url": engine.url}]}}
    )
    router = RoundRobinRouter()
    runtime = build_runtime(config, router=router)
    before = set(asyncio.all_tasks())
    await runtime.start()
    assert router.started
    assert await runtime.wait_ready(3.0)
    runtime.registry.add(EndpointSpec(url="http://127.0.0.1:9"))  # a second scraper, added at run time
    await until(lambda: len(runtime._scrape_tasks) == 2, what="second scraper started")
    await runtime.stop()
    await engine.stop()
    leftover = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
    assert leftover == []
    assert router.stopped


@contextlib.asynccontextmanager
async def gateway_with_two_workers(
    tmp_path: Path, engine: FakeEngine
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, Path]]:
    """`eksinfer gateway --workers 2` as a process, once it said it is up and both processes listen."""
    port = free_block(1)
    cmd = [sys.executable, "-m", "eksinfer.cli.main", "gateway", "--endpoints", engine.url]
    cmd += ["--port", str(port), "--host", "127.0.0.1", "--workers", "2", "--preset", "round-robin"]
    out = tmp_path / "gw.out"
    with out.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"}
        )
    try:

        def banner_or_exit() -> bool:
            assert proc.returncode is None, out.read_text()
            return "Ctrl-C stops" in out.read_text()

        await until(banner_or_exit, timeout_s=30, what="gateway printed its banner")
        assert "2 worker(s)" in out.read_text()
        if LISTEN_TABLES:  # the spawned worker binds the same port (SO_REUSEPORT): one listening socket each
            await until(lambda: listening_sockets(port) == 2, what="both gateway processes listen")
        yield proc, port, out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.slow
async def test_gateway_cli_with_two_workers(tmp_path: Path) -> None:
    engine = await FakeEngine().start()
    try:
        async with gateway_with_two_workers(tmp_path, engine) as (proc, port, out):
            async with httpx.AsyncClient() as client:
                url = f"http://127.0.0.1:{port}/v1/completions"
                results = await asyncio.gather(
                    *(client.post(url, json={"model": "tiny", "prompt": "x"}) for _ in range(20))
                )
            assert [r.status_code for r in results] == [200] * 20, out.read_text()[-3000:]
            assert engine.requests == 20
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        await engine.stop()


LISTEN_TABLES = [p for p in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")) if p.exists()]


def listening_sockets(port: int) -> int:
    """Sockets in LISTEN state on `port`, from Linux's /proc/net/tcp tables (one per SO_REUSEPORT bind)."""
    count = 0
    for table in LISTEN_TABLES:
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the workers")
async def test_workers_stop_when_the_gateway_is_killed(tmp_path: Path) -> None:
    """SIGKILL gives the gateway no chance to stop its workers; they notice their parent is gone and exit,
    instead of serving on the shared port forever (they did)."""
    engine = await FakeEngine().start()
    try:
        async with gateway_with_two_workers(tmp_path, engine) as (proc, _, out):
            workers = _children(proc.pid)
            assert workers, "no worker process found"
            proc.kill()
            await proc.wait()
            await until(lambda: not any(_alive(pid) for pid in workers), what="workers exited")
            assert "is gone; stopping" in out.read_text()
    finally:
        await engine.stop()


async def test_busy_port_is_a_one_line_error() -> None:
    import socket

    from eksinfer.errors import UsageError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = parse_config({"server": {"host": "127.0.0.1", "port": port}})
        router = RoundRobinRouter()
        runtime = build_runtime(config, router=router)
        with pytest.raises(UsageError, match=r"^server\.port: cannot listen on 127\.0\.0\.1:"):
            await runtime.start()
        assert router.stopped  # what had started is stopped again
