"""A client that goes away frees its engine slot, as vLLM's `with_cancellation` aborts the request.

Before the fix the simulator ran without aiohttp's `handler_cancellation`, so a non-streaming request
whose client had hung up kept decoding (and holding KV blocks) until max_tokens."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.sim.conftest import StartCluster
from tests.waiting import DEADLINE_S, until


@pytest.mark.parametrize("stream", [False, True])
async def test_client_disconnect_aborts_the_request(start: StartCluster, stream: bool) -> None:
    from eksinfer.sim.config import FaultOptions

    cluster = await start(faults=FaultOptions(slow_token_s=0.05))  # 1000 tokens would take 50 s
    engine = cluster.replicas[0].engine
    body = {"prompt": "x", "max_tokens": 1000, "ignore_eos": True, "stream": stream}
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        if stream:  # read a few chunks, then hang up
            async with client.stream("POST", cluster.urls[0] + "/v1/completions", json=body) as r:
                chunks = 0
                async for _ in r.aiter_bytes():
                    chunks += 1
                    if chunks == 3:
                        break
            assert engine.scheduler.running or engine.scheduler.waiting  # still decoding at the hang-up
        else:  # give up waiting for the whole answer once the engine is decoding it
            post = asyncio.create_task(client.post(cluster.urls[0] + "/v1/completions", json=body))
            await until(lambda: engine.scheduler.running, what="request decoding")
            post.cancel()
            with pytest.raises(asyncio.CancelledError):
                await post
    await until(lambda: not (engine.scheduler.running or engine.scheduler.waiting), what="request aborted")
    async with httpx.AsyncClient(timeout=5) as client:  # and it keeps serving
        r = await client.post(cluster.urls[0] + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 200
