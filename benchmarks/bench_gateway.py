"""`make bench ARGS=gateway`: routing quality, side by side in one run.

1. Shared-prefix workload on 4 simulated replicas (`eksinfer.sim`, llama-3.1-8b on H100, time scale 10 so
   that queueing, not Python, dominates) whose total KV capacity is smaller than the sum of the groups' system
   prompts, at an offered rate above what a cache-blind router sustains: `eksinfer gateway` with presets
   kv-aware, round-robin, load and approx-prefix; TTFT P90, throughput, KV hit rate from the engines'
   `vllm:prefix_cache_{hits,queries}_total`, next to the hit rate of an ideal placement. Fresh engines per
   row.
2. The same workload through vllm-router (PyPI `vllm-router`, installed on demand) with `cache_aware` and
   `kv_aware` (fed the same KV events); rows are skipped with the reason when it cannot run.
3. In-process: decision latency per preset, and index memory over a long run with many distinct prefixes.

Options: --quick (fewer requests), --no-vllm-router, --only-inproc, --rate R, --time-scale T.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.gateway_e2e import (
    RunResult,
    SimCluster,
    make_tokenizer_dir,
    run_load,
    start_gateway,
    start_vllm_router,
    stop_proc,
    vllm_router_exe,
    wait_http,
    workdir,
    workload_requests,
)
from benchmarks.gateway_inproc import run_inproc
from eksinfer.bench.config import SharedPrefixWorkload

REPLICAS = 4
BLOCK = 16
PRESETS = ("kv-aware", "round-robin", "load", "approx-prefix")


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench_gateway")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-vllm-router", action="store_true")
    ap.add_argument("--only-inproc", action="store_true")
    ap.add_argument("--skip-inproc", action="store_true")
    ap.add_argument("--rate", type=float, default=7.0, help="offered requests per second")
    ap.add_argument("--time-scale", type=float, default=10.0)
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--system-tokens", type=int, default=2000)
    ap.add_argument(
        "--capacity-ratio", type=float, default=0.9, help="total KV blocks / sum of prefix blocks"
    )
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--no-ideal", action="store_true", help="skip the measured ideal-placement row")
    ap.add_argument("--show-decisions", action="store_true", help="print the gateway's decision counts")
    ap.add_argument("--kv-profile", default=None, help="JSON profile replacing the kv-aware preset (tuning)")
    return ap.parse_args(argv)


def workload(args: argparse.Namespace) -> SharedPrefixWorkload:
    per_group = 10 if args.quick else 20
    return SharedPrefixWorkload(
        num_groups=args.groups,
        num_prompts_per_group=per_group,
        system_prompt_len=args.system_tokens,
        question_len=100,
        output_len=16,
    )


def blocks_per_replica(w: SharedPrefixWorkload, ratio: float) -> int:
    prefix_blocks = w.num_groups * math.ceil(w.system_prompt_len / BLOCK)
    return int(prefix_blocks * ratio / REPLICAS)


def ideal_hit_rate(w: SharedPrefixWorkload, num_blocks: int, prompt_tokens: float) -> tuple[float, int]:
    """Analytic estimate of a static partition: each replica pins as many whole system prompts as fit, every
    other request of a pinned group hits its prefix's full blocks, unpinned groups always miss. LRU churn can
    beat it (a replica cycling 4 groups with room for 3.6 still hits most of them), so the measured ideal
    static placement is the reference. Returns (hit rate, groups pinned)."""
    prefix_blocks = w.system_prompt_len // BLOCK  # full blocks of the system prompt (a lower bound)
    per_replica = num_blocks // max(1, prefix_blocks + 1)
    pinned = min(w.num_groups, REPLICAS * per_replica)
    hits_per_group = (w.num_prompts_per_group - 1) * prefix_blocks * BLOCK
    total_tokens = w.num_groups * w.num_prompts_per_group * prompt_tokens
    return pinned * hits_per_group / total_tokens, pinned


async def _row(
    name: str, start: Callable[[SimCluster], Awaitable[tuple[Any, str]]] | None, args: argparse.Namespace
) -> RunResult | str:
    """Fresh engines, start the router under test, run the workload; a string says why the row was skipped."""
    w = workload(args)
    cluster = SimCluster(
        REPLICAS, blocks_per_replica(w, args.capacity_ratio), args.time_scale, args.tokenizer_dir
    )
    await cluster.start()
    proc = None
    try:
        if start is None:  # the ideal placement: the client sends each group to its own engine
            return await run_load(None, cluster.urls, workload_requests(w, seed=7), args.rate, seed=11)
        proc, url = await start(cluster)
        try:
            await wait_http([f"{url}/v1/models"], proc, timeout_s=60)
        except RuntimeError as err:
            return f"{name}: did not start ({str(err)[:600]})"
        await asyncio.sleep(1.0)  # let scrapers and event subscriptions settle
        result = await run_load(url, cluster.urls, workload_requests(w, seed=7), args.rate, seed=11)
        if args.show_decisions:
            await show_decisions(url)
        return result
    finally:
        stop_proc(proc)
        cluster.stop()


async def show_decisions(url: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if ("decision" in line and not line.startswith("#")) or (
            "predicted_hit" in line and not line.startswith("#")
        ):
            print("   ", line)


def _print_row(name: str, r: RunResult, base: RunResult | None) -> None:
    ratio = ""
    if base is not None and r.ok:
        ratio = (
            f"  ttft_p90 x{base.p(0.9) / r.p(0.9):.2f} lower, throughput x{r.req_per_s / base.req_per_s:.2f}"
        )
    print(
        f"{name:<24} {r.ok:>4} {r.errors:>4} {r.p(0.5) * 1000:>9.0f} {r.p(0.9) * 1000:>9.0f} "
        f"{r.req_per_s:>8.2f} {r.hit_rate:>7.1%}{ratio}",
        flush=True,
    )


async def quality(args: argparse.Namespace) -> None:
    w = workload(args)
    num_blocks = blocks_per_replica(w, args.capacity_ratio)
    prompt_tokens = w.system_prompt_len + w.question_len + 8  # + chat template tokens
    ideal, pinned = ideal_hit_rate(w, num_blocks, prompt_tokens)
    prefix_blocks = w.num_groups * math.ceil(w.system_prompt_len / BLOCK)
    print(
        f"\n-- routing quality: {w.num_groups} groups x {w.num_prompts_per_group} prompts, system "
        f"{w.system_prompt_len} + question {w.question_len} tokens, output {w.output_len}; {REPLICAS} "
        f"replicas x {num_blocks} blocks of {BLOCK} (total {REPLICAS * num_blocks} < {prefix_blocks} prefix "
        f"blocks); Poisson {args.rate} req/s; sim time scale {args.time_scale} --"
    )
    print(
        f"analytic static-partition estimate: hit rate {ideal:.1%} ({pinned} of {w.num_groups} prefixes "
        "pinned, no churn); the measured ideal static placement row below is the reference"
    )
    print(f"{'router':<24} {'ok':>4} {'err':>4} {'ttft p50':>9} {'ttft p90':>9} {'req/s':>8} {'hit':>7}")
    wd = workdir()
    args.tokenizer_dir = make_tokenizer_dir(wd / "tokenizer")
    print(f"tokenizer: byte-level BPE trained locally ({args.tokenizer_dir}), loaded by engines and routers")
    results: dict[str, RunResult] = {}
    for preset in args.presets.split(","):

        async def gw(cluster: SimCluster, preset: str = preset) -> tuple[Any, str]:
            profiles = {"kv-aware": json.loads(args.kv_profile)} if args.kv_profile else None
            return start_gateway(cluster, preset, wd, profiles)

        res = await _row(preset, gw, args)
        if isinstance(res, str):
            print(f"{preset:<24} skipped: {res}")
            continue
        results[preset] = res
    ideal_run = await _row("ideal", None, args) if not args.no_ideal else None
    base = results.get("round-robin")
    for name, res in results.items():
        _print_row(f"eksinfer {name}", res, base)
    if isinstance(ideal_run, RunResult):
        _print_row("ideal static placement", ideal_run, base)
    kv = results.get("kv-aware")
    if kv is not None:
        print(f"kv-aware hit rate / analytic estimate: {kv.hit_rate / ideal:.2f}", end="")
        if isinstance(ideal_run, RunResult) and ideal_run.hit_rate:
            print(f"; / ideal static placement measured: {kv.hit_rate / ideal_run.hit_rate:.2f}", end="")
        print()
    if not args.no_vllm_router:
        await vllm_router_rows(args, base, kv)


async def vllm_router_rows(args: argparse.Namespace, base: RunResult | None, kv: RunResult | None) -> None:
    exe = vllm_router_exe()
    if exe is None:
        print(
            "vllm-router rows skipped: `pip install vllm-router` failed"
            " (no network or no wheel for this platform)"
        )
        return
    for policy in ("cache_aware", "kv_aware"):

        async def vr(cluster: SimCluster, policy: str = policy) -> tuple[Any, str]:
            return start_vllm_router(exe, cluster, policy)

        res = await _row(f"vllm-router {policy}", vr, args)
        if isinstance(res, str):
            print(f"vllm-router {policy:<12} skipped: {res}")
            continue
        _print_row(f"vllm-router {policy}", res, base)
        if kv is not None and res.ok:
            print(
                f"  eksinfer kv-aware vs vllm-router {policy}: ttft_p90 x{res.p(0.9) / kv.p(0.9):.2f} lower, "
                f"hit rate {kv.hit_rate:.1%} vs {res.hit_rate:.1%}"
            )


def main(argv: list[str]) -> None:
    args = parse(argv)
    if not args.only_inproc:
        asyncio.run(quality(args))
    if not args.skip_inproc:
        run_inproc()
