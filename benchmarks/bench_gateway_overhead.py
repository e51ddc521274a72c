"""Gateway overhead: added latency over calling an engine directly, and the highest rate sustained, for the
eksinfer gateway and vllm-router (PyPI `vllm-router`, Rust) side by side in one run.

Setup: 4 "instant" engines (one aiohttp+uvloop process answering a fixed chat completion at once, plus the
/health, /v1/models and /metrics routes the routers read), each router in its own process, and one load
generator process (aiohttp + uvloop). The same chat bodies (a shared 1,200-character system prompt, 64 of
them, plus a distinct question) go to every target. Phases per target:
  c=1      1,000 sequential requests        -> P50 / P99 latency; "added" = target minus direct
  rate     open loop at RATE_RPS for 4 s    -> P50 / P99 latency (added as above)
  max      closed loop, 32 connections, 4 s -> requests per second answered (all must be HTTP 200)
eksinfer runs as configured by `eksinfer up` (kv-aware, built-in tokenizer), once with one process and once
with `server.workers: 2` (SO_REUSEPORT; vllm-router is multi-threaded, a Python process uses one core).
Goals (issue 5): kv-aware adds < 1 ms P50 and < 5 ms P99; its max rate > vllm-router cache_aware and
>= 0.7x vllm-router round_robin. On a shared 2-core machine the client, routers and engines compete for the
same cores, so only ratios measured in the same run mean anything.

Run: `make bench ARGS=gateway_overhead` (or `.venv/bin/python -m benchmarks.run gateway_overhead`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
N_ENGINES = 4
SEQ_REQUESTS = 1000
RATE_RPS = 200
RATE_S = 4.0
MAX_CONNS = 32
MAX_S = 4.0
MODEL = "bench-model"
SYSTEM = "You are a meticulous assistant. Follow the policy below carefully. " * 18  # ~1,200 characters
REPLY = {
    "id": "cmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 300, "completion_tokens": 1, "total_tokens": 301},
}


def bodies() -> list[bytes]:
    out = []
    for i in range(256):
        messages = [
            {"role": "system", "content": f"[tenant {i % 64}] " + SYSTEM},
            {"role": "user", "content": f"Question number {i}: what is {i} squared?"},
        ]
        out.append(json.dumps({"model": MODEL, "messages": messages, "max_tokens": 1}).encode())
    return out


# --- the instant engines (run in a child process) --------------------------------------------------------
def serve_engines(ports: list[int]) -> None:
    import uvloop
    from aiohttp import web

    reply = json.dumps(REPLY).encode()
    models = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]})
    metrics = (
        'vllm:num_requests_running{engine="0"} 0\nvllm:num_requests_waiting{engine="0"} 0\n'
        'vllm:kv_cache_usage_perc{engine="0"} 0.1\n'
        'vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="100000"} 1.0\n'
    )

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=reply, content_type="application/json")

    def fixed(text: str, content_type: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=text, content_type=content_type)

        return handler

    async def main() -> None:
        app = web.Application()
        app.add_routes(
            [
                web.post("/v1/chat/completions", chat),
                web.post("/v1/completions", chat),
                web.get("/health", fixed("ok", "text/plain")),
                web.get("/v1/models", fixed(models, "application/json")),
                web.get("/metrics", fixed(metrics, "text/plain")),
            ]
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for port in ports:
            await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        await asyncio.Event().wait()

    uvloop.run(main())


# --- load generation -----------------------------------------------------------------------------------
@dataclass
class Result:
    seq_p50_ms: float
    seq_p99_ms: float
    rate_p50_ms: float
    rate_p99_ms: float
    max_rps: float
    errors: int
    requests: int = 0  # sent in all phases (warm-up included)
    cpu_us_per_request: float = float(
        "nan"
    )  # CPU of the target's processes / requests (robust to contention)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def measure(url: str, payloads: list[bytes]) -> Result:
    import aiohttp

    target = url + "/v1/chat/completions"
    headers = {"Content-Type": "application/json"}
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> float:
            nonlocal errors
            started = time.perf_counter()
            async with session.post(target, data=payloads[i % len(payloads)], headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            return time.perf_counter() - started

        for i in range(200):  # warm-up: connections, caches, JIT-free but allocator-warm
            await one(i)
        seq = [await one(i) for i in range(SEQ_REQUESTS)]
        rate = await open_loop(one, RATE_RPS, RATE_S)
        done = 0
        stop_at = time.perf_counter() + MAX_S

        async def worker(w: int) -> None:
            nonlocal done
            i = w
            while time.perf_counter() < stop_at:
                await one(i)
                done += 1
                i += MAX_CONNS

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(MAX_CONNS)))
        max_rps = done / (time.perf_counter() - started)
    ms = 1000.0
    total = 200 + len(seq) + len(rate) + done
    return Result(
        pct(seq, 0.5) * ms,
        pct(seq, 0.99) * ms,
        pct(rate, 0.5) * ms,
        pct(rate, 0.99) * ms,
        max_rps,
        errors,
        total,
    )


async def open_loop(
    one: Callable[[int], Coroutine[Any, Any, float]], rps: float, seconds: float
) -> list[float]:
    """Sends at fixed absolute times (open loop: a slow answer does not delay the next send)."""
    start = time.perf_counter() + 0.05
    tasks: list[asyncio.Task[float]] = []
    for i in range(int(rps * seconds)):
        delay = start + i / rps - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    return list(await asyncio.gather(*tasks))


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in a process group (Linux /proc; nan elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return float("nan")
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "(comm)": state ppid pgrp ... utime(12) stime(13)
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def load_process(url: str, pgid: int | None = None) -> Result:
    """Runs `measure` in a fresh process so the client never shares an event loop with a router; with
    `pgid`, also reports the target's CPU time per request."""
    cpu_before = group_cpu_s(pgid) if pgid is not None else float("nan")
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_gateway_overhead", "--client", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    result = Result(**json.loads(out.stdout.strip().splitlines()[-1]))
    if pgid is not None and result.requests:
        result.cpu_us_per_request = (group_cpu_s(pgid) - cpu_before) / result.requests * 1e6
    return result


# --- targets ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def process(cmd: list[str], health: str, log: Path) -> Iterator[int]:
    import urllib.request

    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited: {log.read_text()[-500:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=1) as resp:
                if resp.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} not healthy: {log.read_text()[-500:]}")
            time.sleep(0.2)
        time.sleep(0.5)  # first scrapes / model discovery
        yield proc.pid  # also its process group id (start_new_session)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def eksinfer_cmd(engines: list[str], preset: str, port: int, tmp: Path, workers: int = 1) -> list[str]:
    config = tmp / f"gw-{preset}-{workers}.yaml"
    static = "".join(f"    - {{url: '{u}'}}\n" for u in engines)
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}, workers: {workers}}}\n"
        f"endpoints:\n  static:\n{static}"
        f"routing: {{preset: {preset}, tokenizer: {{mode: builtin}}}}\n"
    )
    return [
        sys.executable,
        "-m",
        "eksinfer.cli.main",
        "gateway",
        "--config",
        str(config),
        "--log-level",
        "warning",
    ]


def vllm_router_bin() -> tuple[str | None, str]:
    """The vllm-router executable, installed into this virtualenv on first use; (None, why) if unavailable."""
    found = shutil.which("vllm-router", path=str(BIN)) or shutil.which("vllm-router")
    if found:
        return found, ""
    pip = [sys.executable, "-m", "pip", "install", "-q", "vllm-router"]
    try:
        subprocess.run(pip, check=True, capture_output=True, timeout=300)
    except (subprocess.SubprocessError, OSError) as err:
        return None, f"pip install vllm-router failed ({type(err).__name__})"
    found = shutil.which("vllm-router", path=str(BIN))
    return (found, "") if found else (None, "vllm-router installed but its executable was not found")


def vllm_router_cmd(exe: str, engines: list[str], policy: str, port: int) -> list[str]:
    metrics = [
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(free_port()),
    ]  # default 29000 may be taken
    return [
        exe,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--policy",
        policy,
        *metrics,
        "--worker-urls",
        *engines,
    ]


# --- report ----------------------------------------------------------------------------------------------
def report(results: dict[str, Result | str]) -> None:
    direct = results["direct"]
    assert isinstance(direct, Result)
    print(
        f"{'target':<28}{'c=1 P50':>9}{'P99':>8}{'added P50':>11}{'P99':>8}"
        f"{'@' + str(RATE_RPS) + '/s P50':>12}{'P99':>8}{'added P50':>11}{'P99':>8}"
        f"{'max req/s':>11}{'CPU us/req':>11}{'err':>5}"
    )
    for name, res in results.items():
        if isinstance(res, str):
            print(f"{name:<28}skipped: {res}")
            continue
        print(
            f"{name:<28}{res.seq_p50_ms:9.2f}{res.seq_p99_ms:8.2f}"
            f"{res.seq_p50_ms - direct.seq_p50_ms:11.2f}{res.seq_p99_ms - direct.seq_p99_ms:8.2f}"
            f"{res.rate_p50_ms:12.2f}{res.rate_p99_ms:8.2f}"
            f"{res.rate_p50_ms - direct.rate_p50_ms:11.2f}{res.rate_p99_ms - direct.rate_p99_ms:8.2f}"
            f"{res.max_rps:11.0f}{res.cpu_us_per_request:11.0f}{res.errors:5d}"
        )
    print(
        "(latencies in ms; 'added' = target minus direct to the engine, same phase; CPU us/req = the target's"
        " processes' CPU time over all its requests, the figure least disturbed by other load on the machine)"
    )
    kv = results.get("eksinfer kv-aware")
    if not isinstance(kv, Result):
        return
    added50, added99 = kv.seq_p50_ms - direct.seq_p50_ms, kv.seq_p99_ms - direct.seq_p99_ms
    print(f"kv-aware added at c=1: P50 {added50:.2f} ms (goal < 1), P99 {added99:.2f} ms (goal < 5)")
    for mine in ("eksinfer kv-aware", "eksinfer kv-aware x2 workers"):
        mine_res = results.get(mine)
        for other, goal in (("vllm-router cache_aware", "> 1.0"), ("vllm-router round_robin", ">= 0.7")):
            ref = results.get(other)
            if isinstance(mine_res, Result) and isinstance(ref, Result):
                cpu = ref.cpu_us_per_request / mine_res.cpu_us_per_request
                print(
                    f"max rate {mine} / {other}: {mine_res.max_rps / ref.max_rps:.2f}x (goal {goal});"
                    f" requests per CPU-second: {cpu:.2f}x"
                )


def main(argv: list[str]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-gw-"))
    ports = [free_port() for _ in range(N_ENGINES)]
    engines = [f"http://127.0.0.1:{p}" for p in ports]
    engine_cmd = [sys.executable, "-m", "benchmarks.bench_gateway_overhead", "--engines", *map(str, ports)]
    results: dict[str, Result | str] = {}
    print(
        f"{N_ENGINES} instant engines, {os.cpu_count()} CPUs;"
        " client, routers and engines in separate processes"
    )
    with process(engine_cmd, engines[0] + "/health", tmp / "engines.log"):
        results["direct"] = load_process(engines[0])
        for preset, workers in (("kv-aware", 1), ("kv-aware", 2), ("round-robin", 1)):
            port = free_port()
            cmd = eksinfer_cmd(engines, preset, port, tmp, workers)
            name = f"eksinfer {preset}" + (f" x{workers} workers" if workers > 1 else "")
            with process(cmd, f"http://127.0.0.1:{port}/ready", tmp / "gw.log") as pgid:
                if workers > 1:
                    time.sleep(1.5)  # the spawned worker imports and binds after the first one is ready
                results[name] = load_process(f"http://127.0.0.1:{port}", pgid)
        exe, why = vllm_router_bin()
        for policy in ("round_robin", "cache_aware"):
            name = f"vllm-router {policy}"
            if exe is None:
                results[name] = why
                continue
            port = free_port()
            try:
                with process(
                    vllm_router_cmd(exe, engines, policy, port),
                    f"http://127.0.0.1:{port}/health",
                    tmp / "vr.log",
                ) as pgid:
                    results[name] = load_process(f"http://127.0.0.1:{port}", pgid)
            except RuntimeError as err:
                results[name] = str(err).splitlines()[0][:120]
    report(results)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--engines"]:
        serve_engines([int(p) for p in sys.argv[2:]])
    elif sys.argv[1:2] == ["--client"]:
        import dataclasses

        import uvloop

        result = uvloop.run(measure(sys.argv[2], bodies()))
        print(json.dumps(dataclasses.asdict(result)))
    else:
        main(sys.argv[1:])
