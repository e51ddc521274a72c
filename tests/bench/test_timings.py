"""Measured TTFT, TPOT, ITL, e2e and throughput against a server whose timings are known in advance.

The fake server sends the first token 50 ms after the request arrives and one token every 10 ms after that,
on an absolute schedule. With N = 20 output tokens: TTFT = 50 ms, TPOT = ITL = 10 ms, e2e = 50 + 19 * 10 =
240 ms. Server and client both time on the clock of a virtual-time event loop (looptime, `virtual_time`
marker): sleeps end exactly when due and socket I/O takes no virtual time. So every figure is exact on any
machine, however slow or busy, and the tests check the bench's bookkeeping (which timestamp, which gap,
which divisor) to the microsecond. How close real timings come is measured in `make bench ARGS=client`.
"""

from __future__ import annotations

import asyncio

import pytest

from eksinfer.bench import BenchConfig, run_bench

pytestmark = pytest.mark.virtual_time
EXACT = 1e-6  # ms: float rounding only

TTFT_MS, ITL_MS, N = 50.0, 10.0, 20
E2E_MS = TTFT_MS + (N - 1) * ITL_MS  # 240 ms


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
async def test_latencies_match_server_schedule(fake_server, endpoint):
    clock = asyncio.get_running_loop().time
    async with fake_server(ttft_s=TTFT_MS / 1000, itl_s=ITL_MS / 1000, clock=clock) as (_, url):
        cfg = BenchConfig(
            target=url,
            model="fake-model",
            endpoint=endpoint,
            concurrency=4,
            num_requests=8,
            max_tokens=N,
            workload={"type": "random", "input_len": 32},
        )
        result = await run_bench(cfg, clock=clock)
    s = result.summary
    assert s["requests"] == {"completed": 8, "failed": 0, "total": 8}
    for key in ("p50", "p99", "mean"):
        assert s["ttft_ms"][key] == pytest.approx(TTFT_MS, abs=EXACT)
        assert s["tpot_ms"][key] == pytest.approx(ITL_MS, abs=EXACT)
        assert s["itl_ms"][key] == pytest.approx(ITL_MS, abs=EXACT)
        assert s["e2e_ms"][key] == pytest.approx(E2E_MS, abs=EXACT)
    assert s["itl_ms"]["count"] == 8 * (N - 1)
    assert s["output_tokens"] == 8 * N
    # 8 requests, 4 at a time, 240 ms each: two waves -> 480 ms, 16.7 req/s, 333 tok/s
    assert s["duration_s"] == pytest.approx(2 * E2E_MS / 1000, abs=EXACT)
    assert s["request_throughput"] == pytest.approx(8 / 0.48)
    assert s["output_throughput"] == pytest.approx(8 * N / 0.48)
    for rec in result.records:
        assert rec.ok
        assert rec.output_tokens == N
        assert len(rec.itl_s) == N - 1
        assert rec.tpot_s == pytest.approx((rec.last_token_s - rec.ttft_s) / (N - 1))


async def test_open_loop_rate_and_goodput(fake_server):
    clock = asyncio.get_running_loop().time
    async with fake_server(ttft_s=0.05, itl_s=0.0, clock=clock) as (_, url):
        cfg = BenchConfig(
            target=url,
            model="fake-model",
            rate=50.0,
            arrival="constant",
            num_requests=10,
            max_tokens=2,
            slo={"ttft_ms": 10.0},
        )
        result = await run_bench(cfg, clock=clock)
    s = result.summary
    sent = sorted(r.sent_s for r in result.records)
    # constant arrivals at 50 req/s: sends 20 ms apart from t = 0, each exactly when scheduled
    assert sent == pytest.approx([i * 0.02 for i in range(10)], abs=EXACT / 1000)
    assert s["client"]["lag_ms"]["max"] == pytest.approx(0.0, abs=EXACT)
    assert s["goodput"]["req_per_s"] == 0.0  # every TTFT is 50 ms, SLO 10 ms
    assert s["goodput"]["fraction"] == 0.0


async def test_warmup_is_excluded_and_hit_rate_read(fake_server):
    async with fake_server(block_size=16) as (fake, url):
        cfg = BenchConfig(
            target=url,
            model="fake-model",
            concurrency=1,
            num_requests=4,
            warmup=4,
            max_tokens=2,
            metrics_urls=[url + "/metrics"],
            workload={
                "type": "shared-prefix",
                "num_groups": 1,
                "num_prompts_per_group": 4,
                "system_prompt_len": 64,
                "question_len": 16,
                "output_len": 2,
                "shuffle": False,
            },
        )
        result = await run_bench(cfg)
    assert fake.requests == 8
    assert sum(r.warmup for r in result.records) == 4
    assert result.summary["requests"]["total"] == 4
    # After warm-up every prompt (64 system + 16 question = 80 words = 5 blocks) is fully cached.
    assert result.summary["hit_rate"]["metrics"] == pytest.approx(1.0)
    assert result.summary["hit_rate"]["cached_tokens"] == pytest.approx(1.0)
