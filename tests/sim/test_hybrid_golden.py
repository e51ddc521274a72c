"""The simulator's hybrid KV-cache pool against a real vLLM 0.32 serving a tiny gpt-oss, step for step.

The capture (`tests/kvcache/data/vllm_hybrid_kv_events.json`, made by `scripts/capture-hybrid-kv.py`) holds
each prompt sent, vLLM's own prefix-cache hit for it and every KV event it published: group 0
sliding-window (64 tokens), group 1 full attention, 32-token blocks, sha256_cbor hashes with
PYTHONHASHSEED=0. The simulator's scheduler runs the same prompts (one output token each, as captured) on a
`HybridBlockPool` of the same size and must hit the same tokens and publish the same events: the same hashes
per group in the same order, the same evictions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from eksinfer.kvcache.events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent, decode_batch
from eksinfer.sim.hybrid import HybridBlockPool, group_kinds
from eksinfer.sim.scheduler import Scheduler, SimRequest

FIXTURE = json.loads(
    (Path(__file__).parents[1] / "kvcache" / "data" / "vllm_hybrid_kv_events.json").read_text()
)
BS = FIXTURE["block_size"]
RUNS = {run["name"]: run for run in FIXTURE["runs"]}


def shape(event: KVEvent) -> tuple[Any, ...]:
    """What must match: kind, group, hashes, parent, token span, window and extra keys (not timestamps)."""
    if isinstance(event, BlockStored):
        extra = None if event.extra_keys is None else tuple(event.extra_keys)
        return ("stored", event.group_idx, tuple(event.block_hashes), event.parent_block_hash,
                len(event.token_ids), event.kv_cache_spec_kind, event.kv_cache_spec_sliding_window,
                extra)  # fmt: skip
    if isinstance(event, BlockRemoved):
        return ("removed", event.group_idx, tuple(event.block_hashes))
    assert isinstance(event, AllBlocksCleared)
    return ("cleared",)


def captured(run: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        shape(event)
        for step in run["steps"]
        for message in step["messages"]
        for event in decode_batch(msgspec.msgpack.encode(message["payload"])).events
    ]


def simulate(run: dict[str, Any]) -> tuple[list[int], list[tuple[Any, ...]]]:
    """The prefix hit of each prompt and every event, the capture's steps run through the scheduler."""
    args = run["serve_args"]
    max_model_len = int(args[args.index("--max-model-len") + 1])
    pool = HybridBlockPool(
        run["num_gpu_blocks"],
        BS,
        kinds=group_kinds(1, 1, sliding_first=True),
        sliding_window=FIXTURE["sliding_window"],
        max_model_len=max_model_len,
        in_flight_tokens=2 * 8192,
        emit_events=True,
    )
    sched = Scheduler(pool, max_num_seqs=8, max_num_batched_tokens=8192, max_model_len=max_model_len)
    hits, events = [], []
    for i, step in enumerate(run["steps"]):
        prompt = step.get("prompt_token_ids")
        if not prompt:
            assert pool.reset_prefix_cache()
        else:
            req = SimRequest(str(i), prompt, max_tokens=1, block_size=BS, hash_seed="0", arrival_time=0.0)
            sched.add(req)
            while sched.has_work():
                sched.update(sched.schedule(), lambda r: 7)
            hits.append(req.num_cached_tokens)
        events += [shape(e) for e in pool.take_events()]
    return hits, events


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_simulated_pool_hits_and_publishes_as_vllm(name: str) -> None:
    run = RUNS[name]
    hits, events = simulate(run)
    assert hits == [step["prefix_cache_hits"] for step in run["steps"] if step.get("prompt_token_ids")]
    assert events == captured(run)
