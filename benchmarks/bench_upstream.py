"""The gateway's engine client (`eksinfer.gateway.upstream`) against aiohttp's client, side by side.

Why it exists: the gateway called engines through aiohttp's `ClientSession` until the overhead benchmark
showed the client to be its largest single cost. Both clients here make the same sequential POSTs (one of the
overhead benchmark's chat bodies, keep-alive, no decompression, no cookies) to the same instant engine
(`bench_gateway_overhead.serve_engines`, in its own process), in alternating rounds; the figure that matters
is the client process's CPU time per request, which other jobs on a shared machine disturb least. Wall time
per request is printed too (it includes the engine).

Run: `make bench ARGS=upstream` or `.venv/bin/python -m benchmarks.run upstream` (`--quick`: fewer requests).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from benchmarks.bench_gateway_overhead import bodies, free_port, process
from eksinfer.gateway.upstream import UpstreamPool

BODY = bodies()[0]
HEADERS = {"Content-Type": "application/json"}
PATH = "/v1/chat/completions"


async def _aiohttp_client(url: str, n: int) -> tuple[float, float]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:

        async def one() -> None:
            async with session.post(url + PATH, data=BODY, headers=HEADERS) as r:
                await r.read()

        return await _measure(one, n)


async def _upstream_client(url: str, n: int) -> tuple[float, float]:
    pool = UpstreamPool(connect_timeout_s=5)

    async def one() -> None:
        response = await pool.post(url, PATH, BODY, HEADERS)
        try:
            await response.read()
        finally:
            response.close()

    try:
        return await _measure(one, n)
    finally:
        await pool.close()


async def _measure(one: Callable[[], Awaitable[None]], n: int) -> tuple[float, float]:
    """(wall µs, CPU µs) per request over `n` sequential requests, after a warm-up."""
    for _ in range(200):
        await one()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        await one()
    return (time.perf_counter() - wall0) / n * 1e6, (time.process_time() - cpu0) / n * 1e6


def main(argv: list[str]) -> None:
    import uvloop

    n, rounds = (1000, 3) if "--quick" in argv else (3000, 5)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    engine_cmd = [sys.executable, "-m", "benchmarks.bench_gateway_overhead", "--engines", str(port)]
    log = Path(tempfile.mkdtemp(prefix="bench-upstream-")) / "engine.log"
    results: dict[str, list[tuple[float, float]]] = {"aiohttp ClientSession": [], "eksinfer upstream": []}
    with process(engine_cmd, url + "/health", log):
        for _ in range(rounds):  # alternate, so that a busy moment on the machine hits both
            results["aiohttp ClientSession"].append(uvloop.run(_aiohttp_client(url, n)))
            results["eksinfer upstream"].append(uvloop.run(_upstream_client(url, n)))
    print(f"{n} sequential POSTs a round, {rounds} rounds, medians; instant engine in another process")
    print(f"{'client':<24}{'wall us/req':>12}{'CPU us/req':>12}")
    cpu: dict[str, float] = {}
    for name, runs in results.items():
        wall, cpu[name] = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"{name:<24}{wall:>12.0f}{cpu[name]:>12.0f}")
    ratio = cpu["aiohttp ClientSession"] / cpu["eksinfer upstream"]
    print(f"client CPU per request, aiohttp / eksinfer upstream: {ratio:.1f}x")
