"""The fleet simulation against the HTTP simulator on the same short trace: the same latencies.

Both run the same engine core (sim/core.py): the HTTP side through `eksinfer sim`'s server, with an aiohttp
client streaming each request at its arrival time on a virtual-time loop (looptime: sleeps end exactly when
due, I/O takes no time); the fleet side in its own virtual time, one static replica. Not the openai SDK here:
httpx resolves even 127.0.0.1 in a worker thread, and virtual time runs on while a thread works. Prompts are
token ids: requests of a prefix group share their first blocks, which the fleet represents by synthetic
digests.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import aiohttp
import pytest

from eksinfer.autoscale.capacity import fleet_spec
from eksinfer.autoscale.fleet import Fleet
from eksinfer.autoscale.policies import StaticPolicy
from eksinfer.autoscale.trace import TraceRequest
from eksinfer.planner.schema import Plan
from eksinfer.sim.cluster import start_cluster
from eksinfer.sim.config import SimOptions
from eksinfer.sim.core import CoreConfig


def _trace(n: int = 24) -> tuple[list[TraceRequest], list[list[int]]]:
    rng = random.Random(4)
    groups = [[rng.randrange(1000, 60000) for _ in range(1024)] for _ in range(3)]
    trace, prompts = [], []
    t = 0.0
    for _ in range(n):
        t += rng.expovariate(8.0)
        inp, out = rng.randint(100, 1500), rng.randint(10, 160)
        group = rng.randrange(4) - 1  # a quarter without a shared prefix
        shared = min(inp, rng.randint(0, 1024)) if group >= 0 else 0
        prompt = (groups[group][:shared] if group >= 0 else []) + [
            rng.randrange(1000, 60000) for _ in range(inp - shared)
        ]
        trace.append(TraceRequest(t, inp, out, group, shared))
        prompts.append(prompt)
    return trace, prompts


@pytest.mark.virtual_time
async def test_fleet_latencies_match_the_http_simulator(plan_8b: Plan) -> None:
    trace, prompts = _trace()
    options = SimOptions(port=0, time_scale=1.0, natural_output_tokens=0, max_model_len=4096)
    cluster = await start_cluster(options, 1)
    loop = asyncio.get_running_loop()
    ttft: list[float] = [0.0] * len(trace)
    e2e: list[float] = [0.0] * len(trace)
    try:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        url = cluster.urls[0] + "/v1/completions"
        start = loop.time()

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, start + trace[i].arrival_s - loop.time()))
            sent = loop.time()
            body = {
                "model": options.model,
                "prompt": prompts[i],
                "max_tokens": trace[i].output_tokens,
                "stream": True,
                "ignore_eos": True,
            }
            async with session.post(url, json=body) as response:
                assert response.status == 200
                async for line in response.content:
                    if line.startswith(b"data: {") and not ttft[i]:
                        ttft[i] = loop.time() - sent
            e2e[i] = loop.time() - sent

        try:
            await asyncio.gather(*(one(i) for i in range(len(trace))))
        finally:
            await session.close()
        engine = cluster.engines[0]
        sizing, perf = engine.sizing, engine.perf
    finally:
        await cluster.stop()

    core = CoreConfig(
        num_gpu_blocks=sizing.num_gpu_blocks,
        block_size=options.block_size,
        max_num_seqs=sizing.max_num_seqs,
        max_num_batched_tokens=sizing.max_num_batched_tokens,
        max_model_len=sizing.max_model_len,
        natural_output_tokens=0,
    )
    spec = replace(fleet_spec(plan_8b), core=core)
    res = Fleet(trace, spec, perf, StaticPolicy(1), duration_s=3600.0).run()
    fleet_e2e = [res.ttft_s[i] + res.tpot_s[i] * (r.output_tokens - 1) for i, r in enumerate(trace)]
    for i in range(len(trace)):
        assert res.ttft_s[i] == pytest.approx(ttft[i], rel=0.01, abs=0.001), i
        assert fleet_e2e[i] == pytest.approx(e2e[i], rel=0.01, abs=0.001), i
    assert sum(res.ttft_s) == pytest.approx(sum(ttft), rel=0.02)
    assert res.cached_tokens > 0
