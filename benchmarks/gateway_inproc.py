"""In-process routing benchmarks (no servers): decision latency per preset and index memory over a long run.

Used by bench_gateway.py; kept apart so the end-to-end part stays readable.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
import tracemalloc
from typing import Any

from eksinfer.gateway.routing import Router
from eksinfer.gateway.scheduling.config import load_routing_config
from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState
from eksinfer.kvcache.events import BlockRemoved, BlockStored

BLOCK = 16


def _endpoints(n: int, num_gpu_blocks: int) -> list[EndpointState]:
    return [
        EndpointState(
            id=EndpointId(f"e{i}"),
            url=f"http://e{i}",
            models=frozenset({"m"}),
            block_size=BLOCK,
            num_gpu_blocks=num_gpu_blocks,
            stale=False,
        )
        for i in range(n)
    ]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def decision_latency(prompt_tokens: int, n: int = 400) -> dict[str, tuple[float, float]]:
    """route() wall time per preset (P50, P99 in ms) for prompts of `prompt_tokens` given as token ids, with
    a warm index (half the requests share a prefix another endpoint holds)."""
    out: dict[str, tuple[float, float]] = {}
    rng = random.Random(1)
    prefix = [rng.randrange(1000, 30000) for _ in range(prompt_tokens - 32)]
    for preset in ("round-robin", "load", "approx-prefix", "kv-aware"):
        router = Router(load_routing_config({"preset": preset, "tokenizer": {"mode": "approx"}, "seed": 1}))
        eps = _endpoints(4, 200_000)
        full = prefix[: len(prefix) // BLOCK * BLOCK]
        router.index.apply_event(
            "e1", BlockStored(tuple(range(len(full) // BLOCK)), None, tuple(full), BLOCK)
        )
        times: list[float] = []
        for i in range(n):
            body = {
                "prompt": (prefix if i % 2 else [i, *prefix[1:]]) + [rng.randrange(30000) for _ in range(32)]
            }
            started = time.perf_counter()
            decision = await router.route("m", body, {}, eps)
            times.append(1000 * (time.perf_counter() - started))
            router.on_finish(decision, ok=True)
        out[preset] = (statistics.median(times), _pct(times, 0.99))
    return out


async def memory_long_run(num_prefixes: int = 72_000, checkpoints: int = 9) -> list[dict[str, Any]]:
    """Many distinct prefixes routed and stored (as engines would publish them) with evictions; the index and
    the router's memory must level off at the per-endpoint caps (num_gpu_blocks = 4,096 here)."""
    router = Router(load_routing_config({"preset": "kv-aware", "tokenizer": {"mode": "approx"}, "seed": 1}))
    eps = _endpoints(4, 4096)
    rng = random.Random(2)
    rows: list[dict[str, Any]] = []
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    next_hash = 1
    every = num_prefixes // checkpoints
    for i in range(num_prefixes):
        tokens = [rng.randrange(50000) for _ in range(256)]
        decision = await router.route("m", {"prompt": tokens}, {}, eps)
        router.on_finish(decision, ok=True)
        hashes = tuple(range(next_hash, next_hash + len(tokens) // BLOCK))
        next_hash += len(hashes)
        eid = decision.endpoint.id
        router.index.apply_event(eid, BlockStored(hashes, None, tuple(tokens), BLOCK))
        if i % 3 == 0:  # the engine evicts some blocks too
            router.index.apply_event(eid, BlockRemoved(hashes[-4:]))
        if (i + 1) % every == 0:
            gc.collect()
            rows.append(
                {
                    "prefixes": i + 1,
                    "index_blocks": router.index.size(),
                    "approx_blocks": router.approx_index.size(),
                    "homes": _homes(router),
                    "traced_mib": (tracemalloc.get_traced_memory()[0] - base) / 2**20,
                }
            )
    tracemalloc.stop()
    return rows


def _homes(router: Router) -> int:
    """Entries of the kv-aware profile's prefix-affinity map (capped at 65,536 by default)."""
    for ws in router.profiles["kv-aware"].scorers:
        if ws.type_name == "prefix-affinity-scorer":
            return len(ws.scorer)  # type: ignore[arg-type]
    return 0


def run_inproc() -> None:
    """Print the in-process sections."""
    print("\n-- decision latency in-process (route() only, 4 endpoints, warm index) --")
    print(f"{'preset':<14} {'prompt':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for tokens in (256, 4096):
        for preset, (p50, p99) in asyncio.run(decision_latency(tokens)).items():
            print(f"{preset:<14} {tokens:>7} {p50:>8.3f} {p99:>8.3f}")
    print("\n-- index memory over a long run (distinct 256-token prefixes, cap 4 x 4,096 blocks) --")
    print(
        f"{'prefixes':>9} {'index blocks':>13} {'approx blocks':>14} {'family homes':>13} {'traced MiB':>11}"
    )
    rows = asyncio.run(memory_long_run())
    for row in rows:
        cells = (row["prefixes"], row["index_blocks"], row["approx_blocks"])
        print(f"{cells[0]:>9} {cells[1]:>13} {cells[2]:>14} {row['homes']:>13} {row['traced_mib']:>11.2f}")
    capped = [r for r in rows if r["homes"] >= 65536]
    if len(capped) >= 2:
        band = [r["traced_mib"] for r in capped]
        print(
            f"after every cap is reached (index 4 x 4,096 blocks, family homes 65,536): {min(band):.1f} to "
            f"{max(band):.1f} MiB over {capped[0]['prefixes']}..{capped[-1]['prefixes']} prefixes, no trend "
            "(the swing is dict tables resizing as entries are replaced)"
        )
