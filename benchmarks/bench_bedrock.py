"""The Bedrock tier's client: botocore in a thread pool (`BedrockClient`) against an async path over the
same wire, side by side.

Why it exists: botocore blocks, so the gateway runs it on worker threads (`gateway/bedrock/client.py`). The
alternative is an async path: aiohttp for HTTP, botocore only for SigV4 signing and event-stream decoding.
Both stream the same ConverseStream answers (64 words) from the Bedrock stub (`python -m
eksinfer.sim.bedrock`, in its own process) at the same concurrency, in alternating rounds. Printed per
request: the client process's CPU time (the cost that matters on a gateway pod), wall time over requests
(the inverse of throughput), and the worst event-loop stall seen by a 10 ms ticker (a blocked loop would
show here; on a busy machine both paths show the machine's own stalls). The ratio thread pool / async path
is the price of keeping AWS's own client; botocore alone (sequential, one thread, no event loop) shows how
much of it is botocore's own request and event parsing rather than the hand-off between threads.

Run: `make bench ARGS=bedrock` or `.venv/bin/python -m benchmarks.run bedrock` (`--quick`: fewer requests).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer

from benchmarks.bench_gateway_overhead import free_port, process
from eksinfer.gateway.bedrock.client import BedrockClient
from eksinfer.gateway.bedrock.config import BedrockPoolConfig

MODEL_ID = "us.meta.llama3-3-70b-instruct-v1:0"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": True}
WORDS = 64


async def _threaded(url: str, n: int, concurrency: int) -> tuple[float, float, float]:
    config = BedrockPoolConfig(
        region="us-east-1", endpoint_url=url, models={"m": MODEL_ID}, max_concurrency=concurrency
    )
    client = BedrockClient(config)

    async def one() -> None:
        chunks = [c async for c in client.stream(BODY, "m")]
        assert len(chunks) == WORDS + 1, len(chunks)

    try:
        return await _measure(one, n, concurrency)
    finally:
        await client.close()


async def _async_path(url: str, n: int, concurrency: int) -> tuple[float, float, float]:
    """aiohttp + botocore's signer and event-stream decoder, all on the loop."""
    credentials = Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    signer = SigV4Auth(credentials, "bedrock", "us-east-1")
    target = f"{url}/model/{MODEL_ID.replace(':', '%3A')}/converse-stream"
    payload = json.dumps({"messages": [{"role": "user", "content": [{"text": "hello"}]}]}).encode()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> None:
            request = AWSRequest(
                method="POST", url=target, data=payload, headers={"Content-Type": "application/json"}
            )
            signer.add_auth(request)
            events = 0
            async with session.post(target, data=payload, headers=dict(request.headers.items())) as resp:
                buffer = EventStreamBuffer()
                async for data in resp.content.iter_any():
                    buffer.add_data(data)
                    for message in buffer:
                        json.loads(message.payload)
                        events += 1
            assert events == WORDS + 4, events  # messageStart, deltas, blockStop, messageStop, metadata

        return await _measure(one, n, concurrency)


async def _measure(
    one: Callable[[], Awaitable[None]], n: int, concurrency: int
) -> tuple[float, float, float]:
    """(wall µs, CPU µs per request; worst loop stall, ms) over `n` requests at `concurrency`."""
    for _ in range(20):
        await one()
    stalls: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            stalls.append(now - last - 0.01)
            last = now

    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    tick = asyncio.create_task(ticker())
    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    tick.cancel()
    return wall / n * 1e6, cpu / n * 1e6, max(stalls) * 1e3


def _botocore_alone(url: str, n: int) -> float:
    """CPU µs per stream of plain botocore, sequential, on this thread (no event loop, no hand-off)."""
    import botocore.config
    import botocore.session

    config = botocore.config.Config(retries={"total_max_attempts": 1})
    boto = botocore.session.get_session().create_client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=url, config=config
    )
    request = {"modelId": MODEL_ID, "messages": [{"role": "user", "content": [{"text": "hello"}]}]}
    for _ in range(20):
        list(boto.converse_stream(**request)["stream"])
    cpu0 = time.process_time()
    for _ in range(n):
        list(boto.converse_stream(**request)["stream"])
    return (time.process_time() - cpu0) / n * 1e6


def main(argv: list[str]) -> None:
    import uvloop

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIABENCHBENCHBENCH0")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench" * 8)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    n, rounds = (300, 2) if "--quick" in argv else (1000, 3)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "eksinfer.sim.bedrock", "--port", str(port), "--output-tokens", str(WORDS)]
    with tempfile.TemporaryDirectory() as tmp, process(cmd, f"{url}/ping", Path(tmp) / "stub.log"):
        alone = statistics.median(_botocore_alone(url, n // 2) for _ in range(rounds))
        print(f"botocore alone (sequential, one thread): CPU {alone:7.0f} µs/request")
        for concurrency in (16, 64):
            results: dict[str, list[tuple[float, float, float]]] = {"thread pool": [], "async path": []}
            for _ in range(rounds):
                results["thread pool"].append(uvloop.run(_threaded(url, n, concurrency)))
                results["async path"].append(uvloop.run(_async_path(url, n, concurrency)))
            print(f"{n} streams x {rounds} rounds of {WORDS} words, {concurrency} at a time:")
            med = {}
            for name, rows in results.items():
                wall, cpu, stall = (statistics.median(r[i] for r in rows) for i in range(3))
                med[name] = cpu
                print(
                    f"  {name:<12} CPU {cpu:7.0f} µs/request   wall/requests {wall:7.0f} µs   "
                    f"worst loop stall {stall:5.1f} ms"
                )
            print(f"  CPU ratio thread pool / async path: {med['thread pool'] / med['async path']:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
