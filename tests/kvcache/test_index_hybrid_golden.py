"""The prefix index replays a real vLLM 0.32 hybrid engine's KV events and predicts the hits it measured.

The fixture (`data/vllm_hybrid_kv_events.json`, made by `scripts/capture-hybrid-kv.py`) is a capture of vLLM
0.32 (CPU build) serving a tiny random-weight gpt-oss: KV-cache group 0 is sliding-window (64 tokens), group
1 full attention, 32-token blocks. Each step records the prompt sent, the engine's own prefix-cache hit for it
(`vllm:prefix_cache_hits_total` before and after) and the event batches it published. Before each request
the index, fed only the events published so far, must predict that hit exactly; vLLM never hits the last
token, so a hit is capped at (prompt - 1) // block_size blocks.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from eksinfer.kvcache.events import decode_batch
from eksinfer.kvcache.index import PrefixIndex, chain_keys

FIXTURE = json.loads((Path(__file__).parent / "data" / "vllm_hybrid_kv_events.json").read_text())
BS = FIXTURE["block_size"]
RUNS = {run["name"]: run for run in FIXTURE["runs"]}


def replay(run: dict[str, Any], *, blind: bool = False) -> Iterator[tuple[dict[str, Any], int, PrefixIndex]]:
    """Each step with a prompt, the index's predicted hit in tokens, and the index; `blind` strips the
    KV-cache group from every event, as an index that ignored groups would read them."""
    index = PrefixIndex()
    index.set_capacity("vllm", run["num_gpu_blocks"])
    for step in run["steps"]:
        prompt = step.get("prompt_token_ids")
        if prompt:
            matched = index.match("vllm", chain_keys(prompt, BS))
            yield step, min(matched, (len(prompt) - 1) // BS) * BS, index
        for message in step["messages"]:
            for event in decode_batch(msgspec.msgpack.encode(message["payload"])).events:
                if blind and hasattr(event, "group_idx"):
                    event = dataclasses.replace(event, group_idx=None)  # type: ignore[type-var]
                index.apply_event("vllm", event)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_index_predicts_every_measured_hit(name: str) -> None:
    got = [(step["label"], predicted, step["prefix_cache_hits"]) for step, predicted, _ in replay(RUNS[name])]
    assert got, "the capture has prompts"
    assert [(label, measured) for label, _, measured in got] == [(label, p) for label, p, _ in got]


def test_the_capture_exercises_what_a_group_blind_index_gets_wrong() -> None:
    # The same events read without their groups: the sliding group's sparse stores and its evictions
    # then stand for the full group's blocks, and some predictions miss the engine's hit.
    wrong = [
        step["label"]
        for run in RUNS.values()
        for step, predicted, _ in replay(run, blind=True)
        if predicted != step["prefix_cache_hits"]
    ]
    assert wrong


def test_the_index_never_holds_more_blocks_than_the_engine_pool() -> None:
    # The eviction run's pool is 64 blocks (one reserved): counting one block per group and per copy, the
    # index's bound never has to trim what the engine still holds; its BlockRemoved events keep it in step.
    run = RUNS["eviction"]
    *_, (_, _, index) = replay(run)
    assert run["num_gpu_blocks"] <= 64
    assert index.counters.removed_blocks > 0
    assert index.counters.evicted_blocks == 0
