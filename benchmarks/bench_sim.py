"""Simulator throughput: requests/s sustained at --time-scale 0 by one `eksinfer sim --replicas 4` process.

The simulator runs as its own process (as `eksinfer up` runs it); a closed-loop aiohttp client in this
process keeps `concurrency` short requests in flight, spread round-robin over the replicas, for `duration`
seconds per scenario. Memory is the simulator's resident set (VmRSS, and the VmHWM peak) from /proc.
Goal (issue 3): >= 1,000 short requests/s in total on this machine.

    python -m benchmarks.run sim                       (or: make bench ARGS=sim)
    python benchmarks/bench_sim.py --duration 5 --concurrency 128
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

PROMPT = "Summarise the following note in one line: the quick brown fox jumps over the lazy dog twice."
SCENARIOS = (
    ("completions, 16 tokens, JSON", "/v1/completions", False),
    ("completions, 16 tokens, SSE stream", "/v1/completions", True),
    ("chat, 16 tokens, SSE stream", "/v1/chat/completions", True),
)


def _free_port_run(n: int) -> int:
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + n < 65535 and all(_is_free(base + i) for i in range(1, n)):
            return base
    raise RuntimeError("no free port run")


def _is_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _memory_mib(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = re.search(r"VmRSS:\s+(\d+) kB", status)
    hwm = re.search(r"VmHWM:\s+(\d+) kB", status)
    return (int(rss.group(1)) / 1024 if rss else 0.0, int(hwm.group(1)) / 1024 if hwm else 0.0)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_sim(replicas: int, port: int, events_port: int) -> subprocess.Popen[bytes]:
    kv = (
        f'{{"enable_kv_cache_events":true,"endpoint":"tcp://*:{events_port}","topic":"kv@{{host}}:{{port}}"}}'
    )
    cmd = [sys.executable, "-m", "eksinfer.cli.main", "sim", "--replicas", str(replicas), "--port", str(port)]
    cmd += ["--time-scale", "0", "--kv-events-config", kv, "--log-level", "warning"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


async def _wait_ready(urls: list[str], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        for url in urls:
            while True:
                try:
                    async with session.get(url + "/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"simulator at {url} did not start")
                await asyncio.sleep(0.1)


async def _load(
    urls: list[str], path: str, stream: bool, concurrency: int, duration_s: float
) -> tuple[int, int]:
    body: dict[str, object] = {"max_tokens": 16, "ignore_eos": True, "stream": stream}
    if path.endswith("chat/completions"):
        body["messages"] = [{"role": "user", "content": PROMPT}]
    else:
        body["prompt"] = PROMPT
    targets = itertools.cycle([url + path for url in urls])
    done = errors = 0
    stop_at = time.monotonic() + duration_s

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done, errors
        while time.monotonic() < stop_at:
            async with session.post(next(targets), json=body) as r:
                await r.read()
                if r.status == 200:
                    done += 1
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return done, errors


async def _run(args: argparse.Namespace) -> None:
    port = _free_port_run(args.replicas)
    events_port = _free_port_run(args.replicas)
    proc = _start_sim(args.replicas, port, events_port)
    try:
        urls = [f"http://127.0.0.1:{port + i}" for i in range(args.replicas)]
        await _wait_ready(urls)
        idle_rss, _ = _memory_mib(proc.pid)
        print(
            f"simulator: {args.replicas} replicas in one process (pid {proc.pid}), "
            "--time-scale 0, KV events on"
        )
        print(
            f"client: closed loop, {args.concurrency} in flight, {args.duration:.0f} s per scenario, "
            f"{os.cpu_count()} CPUs"
        )
        print(f"{'scenario':38s} {'req/s':>8s} {'errors':>7s} {'sim CPU ms/req':>15s} {'RSS MiB':>8s}")
        await _load(urls, "/v1/completions", False, 16, 0.5)  # warm up imports and connections
        for name, path, stream in SCENARIOS:
            started, cpu0 = time.monotonic(), _cpu_s(proc.pid)
            done, errors = await _load(urls, path, stream, args.concurrency, args.duration)
            rate = done / (time.monotonic() - started)
            cpu_ms = 1000 * (_cpu_s(proc.pid) - cpu0) / max(done, 1)
            rss, _ = _memory_mib(proc.pid)
            print(f"{name:38s} {rate:8.0f} {errors:7d} {cpu_ms:15.3f} {rss:8.1f}")
        rss, peak = _memory_mib(proc.pid)
        print(f"simulator memory: idle {idle_rss:.1f} MiB, after load {rss:.1f} MiB, peak {peak:.1f} MiB")
        print("goal: >= 1,000 short requests/s in total (issue 3); the simulator is one process on one core,")
        print("so 1000 / (sim CPU ms/req) is its ceiling when the client and other work leave it a core")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _fidelity(requests: int = 32, concurrency: int = 8) -> None:
    """At --time-scale 1 the wall time a busy engine takes should equal the modelled step times it ran."""
    from eksinfer.sim.cluster import start_cluster
    from eksinfer.sim.config import SimOptions

    cluster = await start_cluster(SimOptions(port=0, time_scale=1.0, natural_output_tokens=0), 1)
    try:
        engine = cluster.engines[0]
        body = {"prompt": list(range(1000, 1512)), "max_tokens": 64, "ignore_eos": True}
        pending = iter(range(requests))
        url = cluster.urls[0] + "/v1/completions"

        async def worker(session: aiohttp.ClientSession) -> None:
            for _ in pending:
                async with session.post(url, json=body) as r:
                    await r.read()

        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.monotonic() - started
        print(
            f"time-scale 1 fidelity ({requests} x 512-token prompts, 64 tokens out, {concurrency} in flight, "
            f"llama-3.1-8b on H100): {engine.num_steps} steps, modelled {engine.simulated_s:.3f} s, "
            f"wall {wall:.3f} s, wall / modelled = {wall / engine.simulated_s:.3f}"
        )
    finally:
        await cluster.stop()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="bench_sim", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--duration", type=float, default=5.0)
    args, _ = parser.parse_known_args(argv)
    try:
        import uvloop

        uvloop.run(_run(args))
        uvloop.run(_fidelity())
    except ImportError:  # pragma: no cover
        asyncio.run(_run(args))
        asyncio.run(_fidelity())


if __name__ == "__main__":
    main(sys.argv[1:])
