"""Soak: the memory of `eksinfer up` (the gateway process) and of its simulator under distinct large prompts.

Why it exists: the built-in tokenizer's message cache was bounded by count (4,096 whole prompts), so forty
400 KB chats grew `up` from 61 to 132 MB for good, and 4,096 bodies of the 8 MiB limit would have been tens of
GB. The caches are now bounded in bytes; this section shows both processes flat after warm-up. It starts
`eksinfer up --replicas 1` on free ports, sends `--soak-requests` chats (default 400) each with a distinct
~100 KB user message (about 28k tokens; they fit llama-3.1-8b's context), four at a time, and samples the
resident set (VmRSS) of both processes: at the end of warm-up (the first half: enough to fill the bounded
stores, the 32 MiB message caches and the simulator's 16 MiB KV-event replay buffer), its peak over the rest,
and at the end. Flat means end - start is small next to what the
measured part sent (printed as MB of prompt text).

Run: `make bench ARGS=soak` or `.venv/bin/python -m benchmarks.run soak` (`--soak-requests=120` is quicker,
with a warm-up too short to fill those stores).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import string
import subprocess
import sys
import time
from pathlib import Path

import httpx

PROMPT_CHARS = 100_000
CONCURRENCY = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_block(count: int, offset: int) -> int:
    """A base port with `count` free ports, and the same `offset` higher (KV-event replay sockets)."""
    for _ in range(200):
        base = random.randrange(20000, 50000)
        ok = True
        for port in [base + i for i in range(count)] + [base + offset + i for i in range(count)]:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
        if ok:
            return base
    raise RuntimeError("no free port block")


def rss_mb(pid: int) -> float:
    """Resident set of a process from /proc (Linux), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0])


def _prompt(i: int, rng: random.Random) -> str:
    """Distinct English-looking text, ~PROMPT_CHARS characters; the request number leads so no two share a
    prefix block."""
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 8))) for _ in range(2000)]
    text = [f"request {i}:"]
    size = 0
    while size < PROMPT_CHARS:
        word = rng.choice(words)
        text.append(word)
        size += len(word) + 1
    return " ".join(text)


async def _soak(url: str, pids: dict[str, int], requests: int) -> dict[str, tuple[float, float, float]]:
    rng = random.Random(7)
    warmup = requests // 2
    start: dict[str, float] = {}
    peak = {name: 0.0 for name in pids}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    done = 0
    failures = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done, failures
        while not queue.empty():
            i = queue.get_nowait()
            body = {
                "model": "llama-3.1-8b",
                "messages": [
                    {"role": "system", "content": "You answer in one word."},
                    {"role": "user", "content": _prompt(i, rng)},
                ],
                "max_tokens": 1,
            }
            r = await client.post(url + "/v1/chat/completions", json=body)
            failures += r.status_code != 200
            done += 1
            if done == warmup:
                start.update({name: rss_mb(pid) for name, pid in pids.items()})
            if done > warmup:
                for name, pid in pids.items():
                    peak[name] = max(peak[name], rss_mb(pid))

    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    if failures:
        print(f"  warning: {failures} of {requests} requests did not answer 200")
    return {name: (start[name], peak[name], rss_mb(pid)) for name, pid in pids.items()}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="bench_soak", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--soak-requests", type=int, default=400)
    args, _ = parser.parse_known_args(argv)
    if not Path("/proc/self/status").exists():
        print("  skipped: reads memory from /proc (Linux only)")
        return
    port, sim_port, kv_port = _free_port(), _free_block(1, 0), _free_block(1, 100)
    cmd = [sys.executable, "-m", "eksinfer.cli.main", "up", "--replicas", "1", "--time-scale", "0"]
    cmd += ["--port", str(port), "--sim-port", str(sim_port), "--kv-events-port", str(kv_port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        for line in proc.stdout:
            if b"Ctrl-C stops" in line or time.monotonic() > deadline:
                break
        pids = {"gateway (eksinfer up)": proc.pid, "simulator": _child(proc.pid)}
        before = {name: rss_mb(pid) for name, pid in pids.items()}
        started = time.perf_counter()
        result = asyncio.run(_soak(f"http://127.0.0.1:{port}", pids, args.soak_requests))
        elapsed = time.perf_counter() - started
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    measured = args.soak_requests - args.soak_requests // 2
    sent_mb = measured * PROMPT_CHARS / 1e6
    print(
        f"  {args.soak_requests} chats of ~{PROMPT_CHARS // 1000} KB distinct text, {CONCURRENCY} at a time, "
        f"{elapsed:.0f} s; measured after warm-up: {measured} chats, {sent_mb:.0f} MB of prompt text"
    )
    print(f"  {'process':24} {'idle MB':>8} {'start MB':>9} {'peak MB':>8} {'end MB':>7} {'end-start':>10}")
    for name, (start, peak, end) in result.items():
        print(
            f"  {name:24} {before[name]:8.0f} {start:9.0f} {peak:8.0f} {end:7.0f} {end - start:+10.0f}"
            f"  ({(end - start) / sent_mb:+.2f} MB per MB sent)"
        )
