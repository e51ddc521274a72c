"""Shedding on a predicted TTFT with the prompt's prefill (`gateway/resilience/cascade.py`, `prefill.py`),
side by side with the queue-only prediction it replaced, in one run.

1. Where the prefill term matters: a two-tier cascade (`onprem`, then `eks`) of simulated llama-3.1-8b
   engines, onprem at 5x the simulated H100's time (a slow prefill), eks at 1x; the model's `ttft_slo_s` is
   0.5 s. Closed-loop clients alternate a ~6,000-token prompt (each with its own first block, so nothing is
   cached) and a ~50-token one, streamed; TTFT is the time to the first content chunk. The queue-only arm is
   the same gateway whose cascade never learns a prefill fit (so its prediction is the queue alone, as
   before). Printed per arm and prompt class: requests, TTFT over the SLO, P50/P90, which pool answered.
   The first long prompts of the prefill arm go to onprem: they are what the fit learns from.
2. What it costs per request: `shed_reason` over 3 endpoints with a learned fit, CPU time per call (best of
   5 runs of 20,000), the queue-only check (one call before routing) against the two the prefill term makes
   (before routing without the prompt, after it with the router's counts).

Run: `make bench ARGS=shed` or `.venv/bin/python -m benchmarks.run shed` (`--quick`: fewer requests).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import timeit
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from eksinfer.gateway.config import parse_config
from eksinfer.gateway.proxy import POOL_HEADER
from eksinfer.gateway.resilience.cascade import Cascade, PromptCost
from eksinfer.gateway.resilience.layer import Resilience
from eksinfer.gateway.runtime import build_runtime
from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState
from eksinfer.sim.cluster import start_cluster
from eksinfer.sim.config import SimOptions

MODEL = "llama-3.1-8b"
SLO_S = 0.5
ENGINE = SimOptions(port=0, num_gpu_blocks=8192, max_model_len=16384, natural_output_tokens=0)


class QueueOnlyCascade(Cascade):
    """The prediction before the prefill term: the cascade never sees the prefill histograms."""

    def observe_scrape(self, ep: EndpointState) -> None:
        super().observe_scrape(replace(ep, prefill_requests=None))


@dataclass
class Arm:
    ttft_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    pools: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))


def _prompt(kind: str, i: int) -> str:
    return f"c{i} " + "the cat sat on the mat " * (1000 if kind == "long" else 8)  # ~6,000 or ~50 tokens


async def _run_arm(queue_only: bool, clients: int, pairs: int) -> Arm:
    slow = await start_cluster(replace(ENGINE, time_scale=5.0), 1)
    fast = await start_cluster(replace(ENGINE, time_scale=1.0), 1)
    static = [
        {"url": slow.urls[0], "pool": "onprem", "models": [MODEL]},
        {"url": fast.urls[0], "pool": "eks", "models": [MODEL]},
    ]
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "endpoints": {"static": static},
            "routing": {"preset": "round-robin"},
            "resilience": {"health_checks": {"enabled": False}, "slow_start_s": 0},
            "models": {MODEL: {"cascade": ["onprem", "eks"], "ttft_slo_s": SLO_S}},
        }
    )
    cascade_type = QueueOnlyCascade if queue_only else Cascade
    resilience = Resilience(config.resilience, cascade_type(config.pools, config.models))
    runtime = build_runtime(config, resilience=resilience)
    await runtime.start()
    arm = Arm()
    try:
        for _ in range(400):  # the engines' models and first pages, within 20 s
            if all(s.models and s.scraped_at for s in runtime.registry.all()):
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("the simulated engines were not scraped within 20 s")
        url = f"http://127.0.0.1:{runtime.port}/v1/chat/completions"
        await asyncio.gather(*(_client(url, c, pairs, arm) for c in range(clients)))
    finally:
        await runtime.stop()
        await slow.stop()
        await fast.stop()
    return arm


async def _client(url: str, c: int, pairs: int, arm: Arm) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        for j in range(2 * pairs):
            kind = "long" if j % 2 == 0 else "short"
            body: dict[str, Any] = {
                "model": MODEL,
                "messages": [{"role": "user", "content": _prompt(kind, c * 1000 + j)}],
                "max_tokens": 16,
                "stream": True,
            }
            started = time.perf_counter()
            ttft = float("inf")
            async with http.stream("POST", url, json=body) as r:
                pool = r.headers.get(POOL_HEADER, "?")
                async for line in r.aiter_lines():
                    if ttft == float("inf") and '"content":"' in line and '"content":""' not in line:
                        ttft = time.perf_counter() - started
            arm.ttft_s[kind].append(ttft)
            arm.pools[kind][pool] += 1


def _per_call_us(fn: Any) -> float:
    n = 20_000
    return min(timeit.repeat(fn, number=n, repeat=5, timer=time.process_time)) / n * 1e6


def _cost(learned: bool) -> tuple[float, float]:
    """CPU us per shed_reason call over 3 endpoints, before routing (no prompt) and after it (with one)."""
    bedrock = {"kind": "bedrock", "region": "us-east-1", "models": {"m": "x"}}
    models = {"m": {"cascade": ["eks", "bedrock"], "ttft_slo_s": 2}}
    config = parse_config({"pools": {"eks": {}, "bedrock": bedrock}, "models": models})
    cascade = Cascade(config.pools, config.models)
    plan = cascade.plan("m")
    eks, after = plan.tiers
    eps = [EndpointState(EndpointId(n), "http://x", num_running=8, num_waiting=0) for n in "abc"]
    for ep in eps:
        cascade.observe_decode(ep.id, 2.0)
        for count in (0, 10) if learned else (0,):
            ep.prefill_requests, ep.prefill_tokens, ep.prefill_seconds = count, 2000 * count, 0.1 * count
            ep.itl_count, ep.itl_seconds = 30 * count, 0.9 * count
            cascade.observe_scrape(ep)
    waits = dict.fromkeys((ep.id for ep in eps), 0).__getitem__
    cached = {"a": 1024}

    def post() -> None:
        prompt = PromptCost(2000, cached, "a", 976)  # built per request, as PromptCost.of(decision)
        cascade.shed_reason(eks, plan, eps, waits, after, prompt)

    return _per_call_us(lambda: cascade.shed_reason(eks, plan, eps, waits, after)), _per_call_us(post)


def main(argv: list[str]) -> None:
    clients, pairs = (3, 8) if "--quick" in argv else (3, 20)
    arms = {"queue only": asyncio.run(_run_arm(True, clients, pairs))}
    arms["with prefill"] = asyncio.run(_run_arm(False, clients, pairs))
    print(
        f"{clients} clients x {pairs} (long, short) pairs; onprem 5x slower than eks; SLO {SLO_S} s; "
        "TTFT to the first content chunk"
    )
    print(f"{'arm':<14}{'class':<7}{'n':>4}{'over SLO':>10}{'P50 s':>8}{'P90 s':>8}  pools")
    p90: dict[tuple[str, str], float] = {}
    for name, arm in arms.items():
        for kind in ("long", "short"):
            v = sorted(arm.ttft_s[kind])
            p90[(name, kind)] = v[int(0.9 * (len(v) - 1))]
            over = sum(x > SLO_S for x in v)
            p50 = statistics.median(v)
            print(
                f"{name:<14}{kind:<7}{len(v):>4}{over:>10}{p50:>8.2f}{p90[(name, kind)]:>8.2f}"
                f"  {dict(arm.pools[kind])}"
            )
    for kind in ("long", "short"):
        ratio = p90[("queue only", kind)] / p90[("with prefill", kind)]
        print(f"{kind} prompts' TTFT P90, queue only / with prefill: {ratio:.2f}x")
    queue_only, _ = _cost(learned=False)
    before, after = _cost(learned=True)
    print(
        f"shed_reason CPU per call, 3 endpoints: queue only {queue_only:.2f} us; with the prefill fit "
        f"{before:.2f} us before routing + {after:.2f} us after it = {before + after:.2f} us a request"
    )
