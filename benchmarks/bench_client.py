"""How many requests per second `eksinfer bench` drives, and how much it adds, against an instant backend.

The backend is eksinfer.bench.fakeserver with zero delays (every response is its whole SSE stream in one
write), run in its own process on uvloop, so on a 2-core machine client and server each get about one core;
the capacity printed is therefore a lower bound for the client alone. Three measurements, side by side:

  capacity   closed loop at concurrency 64, 16 output tokens (17 SSE lines) per request: requests/s, and
             the client process's CPU time per request (its ceiling on one dedicated core)
  overhead   concurrency 1, alternating rounds: median e2e and client CPU per request of eksinfer bench vs
             a bare aiohttp loop that reads the same body without parsing or timestamps; the differences
             are what the bench client adds per request (CPU time is the steadier figure on a shared box)
  open loop  Poisson at half the measured capacity: achieved rate and send lag (how late the client sent)

Run: `make bench ARGS=client` or `.venv/bin/python -m benchmarks.run client` (`--quick`: fewer requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import aiohttp

from eksinfer.bench import BenchConfig, run_bench

MODEL = "fake-model"
OUTPUT_TOKENS = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def instant_server() -> Iterator[str]:
    """The fake server in a subprocess; yields its base URL once /v1/models answers."""
    port = _free_port()
    cmd = [sys.executable, "-m", "eksinfer.bench.fakeserver", "--port", str(port), "--model", MODEL]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _config(url: str, **kw: object) -> BenchConfig:
    base = {"target": url, "model": MODEL, "max_tokens": OUTPUT_TOKENS, "check_model": False}
    return BenchConfig.model_validate(base | {"workload": {"type": "random", "input_len": 32}} | kw)


async def bare_loop(url: str, n: int) -> list[float]:
    """e2e of n sequential streamed requests read as raw bytes: the floor any client pays."""
    body = {"model": MODEL, "prompt": "the cat sat", "max_tokens": OUTPUT_TOKENS, "stream": True}
    out = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            start = time.perf_counter()
            async with session.post(url + "/v1/completions", json=body) as resp:
                await resp.read()
            out.append(time.perf_counter() - start)
    return out


async def _capacity(url: str, n: int) -> float:
    cpu0 = time.process_time()
    cap = (await run_bench(_config(url, concurrency=64, num_requests=n))).summary
    cpu_us = (time.process_time() - cpu0) / n * 1e6
    rps: float = cap["request_throughput"]
    print(
        f"capacity   concurrency 64, {n} requests x {OUTPUT_TOKENS} tokens: {rps:,.0f} req/s, "
        f"{cap['output_throughput']:,.0f} SSE tokens/s, {cap['requests']['failed']} failed; client CPU "
        f"{cpu_us:,.0f} us/request = about {1e6 / cpu_us:,.0f} req/s on one dedicated core"
    )
    return rps


async def _overhead(url: str, n: int, rounds: int = 5) -> None:
    """Alternate bench and bare rounds so machine noise hits both; wall medians and CPU per request."""
    walls: dict[str, list[float]] = {"bench": [], "bare": []}
    cpus: dict[str, float] = {"bench": 0.0, "bare": 0.0}
    ttfts: list[float] = []
    per_round = max(1, n // rounds)
    for _ in range(rounds):
        cpu0 = time.process_time()
        seq = await run_bench(_config(url, concurrency=1, num_requests=per_round))
        cpus["bench"] += time.process_time() - cpu0
        walls["bench"] += [r.e2e_s for r in seq.records if r.e2e_s is not None]
        ttfts += [r.ttft_s for r in seq.records if r.ttft_s is not None]
        cpu0 = time.process_time()
        walls["bare"] += await bare_loop(url, per_round)
        cpus["bare"] += time.process_time() - cpu0
    med = {k: statistics.median(v) * 1e6 for k, v in walls.items()}
    cpu = {k: v / (per_round * rounds) * 1e6 for k, v in cpus.items()}
    print(
        f"overhead   concurrency 1, {per_round * rounds} requests each: e2e p50 eksinfer bench "
        f"{med['bench']:.0f} us, bare aiohttp {med['bare']:.0f} us ({med['bench'] - med['bare']:+.0f} us); "
        f"client CPU "
        f"{cpu['bench']:.0f} vs {cpu['bare']:.0f} us/request ({cpu['bench'] - cpu['bare']:+.0f} us)"
    )
    print(
        f"floor      TTFT p50 against the instant backend {statistics.median(ttfts) * 1e6:.0f} us: client, "
        "loopback and server together, the most the measurement itself adds to a TTFT at this load"
    )


async def measure(quick: bool) -> None:
    n_cap, n_seq = (1500, 300) if quick else (5000, 1000)
    with instant_server() as url:
        await run_bench(_config(url, concurrency=8, num_requests=200))  # warm connections and caches
        rps = await _capacity(url, n_cap)
        await _overhead(url, n_seq)
        rate = max(1.0, rps / 2)
        ol = (await run_bench(_config(url, rate=rate, num_requests=min(n_cap, int(rate * 10))))).summary
        lag = ol["client"]["lag_ms"]
        print(
            f"open loop  Poisson {rate:,.0f} req/s offered: {ol['request_throughput']:,.0f} req/s achieved, "
            f"send lag p50 {lag['p50']:.3f} ms p99 {lag['p99']:.3f} ms, {ol['requests']['failed']} failed"
        )
    print(f"machine    {os.cpu_count()} CPUs (shared); client and server each ran on their own event loop")


def main(argv: list[str]) -> None:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(measure("--quick" in argv))


if __name__ == "__main__":
    main(sys.argv[1:])
