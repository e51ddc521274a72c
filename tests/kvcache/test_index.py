"""The prefix index: updates from real-format KV events (both encodings), removal, clear, bounds and TTLs."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from eksinfer.kvcache.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    decode_batch,
    encode_batch,
)
from eksinfer.kvcache.hashing import block_hashes
from eksinfer.kvcache.index import PrefixIndex, chain_keys, engine_hash, request_extra_keys, text_keys

SAMPLE = Path(__file__).parents[1] / "sim" / "data" / "kv_events_blocksize128.json"  # vLLM 0.32 capture
BS = 4


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def stored(tokens: list[int], *, parent_tokens: list[int] | None = None, bs: int = BS) -> BlockStored:
    """A BlockStored as an engine running sha256_cbor would publish for `tokens` after `parent_tokens`."""
    prefix = parent_tokens or []
    full = block_hashes(prefix + tokens, bs)
    own = full[len(prefix) // bs :]
    parent = full[len(prefix) // bs - 1] if prefix else None
    return BlockStored(
        block_hashes=tuple(own), parent_block_hash=parent, token_ids=tuple(tokens), block_size=bs
    )


def roundtrip(events: list[object], encoding: str) -> tuple[object, ...]:
    payload = encode_batch(EventBatch(ts=1.0, events=tuple(events), data_parallel_rank=0), encoding)  # type: ignore[arg-type]
    return decode_batch(payload).events


def test_chain_keys_full_blocks_only_and_chained() -> None:
    keys = chain_keys([1, 2, 3, 4, 5, 6, 7, 8, 9], 4)
    assert len(keys) == 2  # the trailing partial block has no key
    assert chain_keys([1, 2, 3, 4], 4) == keys[:1]
    # Same second block after a different first block: different key (chained).
    assert chain_keys([9, 9, 9, 9, 5, 6, 7, 8], 4)[1] != keys[1]
    # The salt changes block 0 and therefore the whole chain.
    salted = chain_keys([1, 2, 3, 4, 5, 6, 7, 8], 4, extra_keys=request_extra_keys(2, None, "s"))
    assert salted[0] != keys[0]
    assert salted[1] != keys[1]


def test_engine_hash_bytes_and_negative_ints() -> None:
    digest = bytes(range(32))
    assert engine_hash(digest) == int.from_bytes(digest[-8:], "big")
    assert engine_hash(-1) == (1 << 64) - 1


@pytest.mark.parametrize("encoding", ["map", "array"])
def test_stored_then_match_both_encodings(encoding: str) -> None:
    index = PrefixIndex()
    tokens = list(range(100, 112))  # 3 blocks
    (event,) = roundtrip([stored(tokens)], encoding)
    assert index.apply_event("a", event) == 3
    request = chain_keys([*tokens, 1, 2, 3, 4, 5], BS)  # 4 blocks, the last unknown
    assert index.match("a", request) == 3
    assert index.match("b", request) == 0
    assert index.block_size("a") == BS


def test_child_event_chains_through_parent_engine_hash() -> None:
    index = PrefixIndex()
    first, second = list(range(8)), list(range(50, 58))
    index.apply_event("a", stored(first))
    index.apply_event("a", stored(second, parent_tokens=first))
    assert index.match("a", chain_keys(first + second, BS)) == 4
    # A child whose parent never arrived (lost event) cannot be chained: counted, not indexed.
    index.apply_event("b", stored(second, parent_tokens=first))
    assert index.counters.orphan_events == 1
    assert index.endpoint_size("b") == 0


@pytest.mark.parametrize("encoding", ["map", "array"])
def test_removed_and_cleared(encoding: str) -> None:
    index = PrefixIndex()
    tokens = list(range(12))
    ev = stored(tokens)
    index.apply_event("a", roundtrip([ev], encoding)[0])
    (removed,) = roundtrip([BlockRemoved(block_hashes=(ev.block_hashes[1],))], encoding)
    assert index.apply_event("a", removed) == 1
    assert index.match("a", chain_keys(tokens, BS)) == 1  # block 1 gone: the prefix stops there
    (cleared,) = roundtrip([AllBlocksCleared()], encoding)
    index.apply_event("a", cleared)
    assert index.endpoint_size("a") == 0
    assert index.match("a", chain_keys(tokens, BS)) == 0


def test_bytes_hashes_are_accepted() -> None:
    index = PrefixIndex()
    tokens = list(range(8))
    digests = [h.to_bytes(8, "big").rjust(32, b"\x07") for h in block_hashes(tokens, BS)]
    index.apply_event("a", {"type": "BlockStored", "block_hashes": digests, "parent_block_hash": None,
                            "token_ids": tokens, "block_size": BS})  # fmt: skip
    index.apply_event("a", {"type": "BlockRemoved", "block_hashes": [digests[1]]})
    assert index.match("a", chain_keys(tokens, BS)) == 1


def test_golden_vllm_sample() -> None:
    """The captured vLLM 0.32 message (map encoding, block size 128) indexes 2 blocks matched by its
    tokens."""
    msg = json.loads(SAMPLE.read_text())[0]
    payload = msgspec.msgpack.encode(msg["payload"])
    events = decode_batch(payload).events
    index = PrefixIndex()
    assert index.apply_event("vllm", events[0]) == 2
    tokens = msg["payload"][1][0]["token_ids"]
    assert index.match("vllm", chain_keys(tokens + [7] * 130, 128)) == 2
    # The engine hash -> key map lets BlockRemoved with vLLM's own hash find our key.
    assert index.apply_removed("vllm", [msg["payload"][1][0]["block_hashes"][1]]) == 1


def test_capacity_bound_evicts_least_recent() -> None:
    index = PrefixIndex(default_capacity_blocks=100)
    index.set_capacity("a", 4)
    a, b = list(range(8)), list(range(20, 28))
    index.apply_event("a", stored(a))
    index.apply_event("a", stored(b))  # 4 blocks: at capacity
    index.insert("a", chain_keys(a, BS), ttl_s=None)  # routing to `a` touches its blocks
    index.apply_event("a", stored(list(range(40, 44))))  # one more: evicts b's first block (oldest)
    assert index.endpoint_size("a") == 4
    assert index.match("a", chain_keys(a, BS)) == 2
    assert index.match("a", chain_keys(b, BS)) == 0
    assert index.counters.evicted_blocks == 1


def test_speculative_entries_expire_and_events_confirm_them() -> None:
    clock = FakeClock()
    index = PrefixIndex(clock=clock)
    tokens = list(range(12))
    keys = chain_keys(tokens, BS)
    index.insert("a", keys, ttl_s=2.0)
    assert index.match("a", keys) == 3
    clock.now += 2.5
    assert index.match("a", keys) == 0  # expired
    index.insert("a", keys, ttl_s=2.0)
    index.apply_event("a", stored(tokens[:8]))  # the engine confirms the first two blocks
    clock.now += 10
    assert index.match("a", keys) == 2


def test_text_keys_character_blocks() -> None:
    text = "x" * 130
    assert len(text_keys(text, 64)) == 2
    assert text_keys(text, 64, salt="m1") != text_keys(text, 64, salt="m2")


def test_cpu_medium_is_not_indexed() -> None:
    index = PrefixIndex()
    ev = stored(list(range(8)))
    cpu = BlockStored(ev.block_hashes, None, ev.token_ids, BS, medium="CPU")
    assert index.apply_event("a", cpu) == 0
    assert index.endpoint_size("a") == 0


def test_memory_stays_bounded_with_many_distinct_prefixes() -> None:
    index = PrefixIndex()
    index.set_capacity("a", 256)
    for i in range(2000):
        index.apply_event("a", stored([i * 7 + j for j in range(16)]))
    assert index.endpoint_size("a") == 256
    assert len(index._endpoints["a"].engine_to_key) == 256
