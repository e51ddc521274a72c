"""The prefix index against a hybrid engine: a full-attention and one or more sliding-window KV-cache groups.

vLLM's hybrid KV-cache manager (gpt-oss: 18 full and 18 sliding layers; Gemma 3; Mistral-style windows)
publishes one `BlockStored` per group with the same block hashes, tagged `group_idx` and
`kv_cache_spec_kind`, and frees a sliding group's blocks once they fall out of the window, so that group's
`BlockRemoved` events arrive while the full group still holds the same blocks. The events here are built as
vLLM 0.32 emits them (`vllm/v1/core/block_pool.py`, `kv_cache_manager.py`); the expected hits follow
`HybridKVCacheCoordinator.find_longest_cache_hit` / `SlidingWindowManager.find_longest_cache_hit` there.
"""

from __future__ import annotations

import pytest

from eksinfer.kvcache.events import BlockRemoved, BlockStored, EventBatch, decode_batch, encode_batch
from eksinfer.kvcache.hashing import block_hashes
from eksinfer.kvcache.index import PrefixIndex, chain_keys

BS = 4
WINDOW = 8  # tokens: a hit needs cdiv(8 - 1, 4) = 2 contiguous blocks of the sliding group before it
TOKENS = list(range(100, 124))  # 6 blocks
HASHES = block_hashes(TOKENS, BS)
KEYS = chain_keys(TOKENS, BS)


def stored(
    group: int,
    kind: str,
    window: int | None = None,
    tokens: list[int] = TOKENS,
    listed: tuple[int, ...] | None = None,
) -> BlockStored:
    """One group's BlockStored for `tokens` from the root; `listed`: the hashes it names, if not every
    block's (a sliding group's sparse store)."""
    return BlockStored(
        block_hashes=tuple(block_hashes(tokens, BS)) if listed is None else listed,
        parent_block_hash=None,
        token_ids=tuple(tokens),
        block_size=BS,
        group_idx=group,
        kv_cache_spec_kind=kind,
        kv_cache_spec_sliding_window=window,
    )


def removed(group: int, *blocks: int) -> BlockRemoved:
    return BlockRemoved(block_hashes=tuple(HASHES[i] for i in blocks), group_idx=group)


def hybrid(*sliding_removed: int) -> PrefixIndex:
    """An endpoint holding TOKENS in both groups, less the sliding group's `sliding_removed` blocks."""
    index = PrefixIndex()
    index.apply_event("a", stored(0, "full_attention"))
    index.apply_event("a", stored(1, "sliding_window", WINDOW))
    if sliding_removed:
        index.apply_event("a", removed(1, *sliding_removed))
    return index


def test_sliding_evictions_keep_the_full_prefix_while_the_window_is_held() -> None:
    # vLLM frees a sliding group's out-of-window blocks first; they are evicted (BlockRemoved, group 1) while
    # the full group keeps them. Blocks 4 and 5 cover the window before token 24: the whole prompt is a hit.
    index = hybrid(0, 1, 2, 3)
    assert index.match("a", KEYS) == 6
    assert index.endpoint_size("a") == 6  # every key is still held by the full group


def test_the_hit_ends_where_the_sliding_group_last_holds_a_window() -> None:
    index = hybrid(4, 5)  # the sliding group holds blocks 0-3 only
    assert index.match("a", KEYS) == 4
    index = hybrid(0, 3, 5)  # runs of the sliding group: [1, 2] and [4]: the right-most run of 2 ends at 3
    assert index.match("a", KEYS) == 3
    index = hybrid(1, 2, 3, 4, 5)  # no run of 2; a prompt's first block alone needs no window before it
    assert index.match("a", KEYS) == 1
    index = hybrid(0, 2, 4)  # no run of 2 and not held from the start: nothing
    assert index.match("a", KEYS) == 0


def test_the_full_group_bounds_the_prefix() -> None:
    index = hybrid()
    assert index.apply_event("a", removed(0, 3)) == 1
    assert index.match("a", KEYS) == 3  # block 3 gone from full attention; blocks 1-2 are a window
    assert index.match("a", KEYS[:2]) == 2


def test_a_group_removal_drops_the_entry_only_when_no_group_holds_it() -> None:
    index = hybrid()
    assert index.apply_event("a", removed(1, 0, 1)) == 2
    assert index.endpoint_size("a") == 6
    assert index.apply_event("a", removed(0, 0)) == 1
    assert index.endpoint_size("a") == 5
    assert index.apply_event("a", removed(1, 0)) == 0  # already gone from that group
    assert index.match("a", KEYS) == 0


def test_two_sliding_groups_agree_on_one_hit() -> None:
    # A larger window needs 3 blocks: group 1 holds [2, 3, 4, 5], group 2 (window 12) holds [0, 1, 2, 3].
    index = PrefixIndex()
    index.apply_event("a", stored(0, "full_attention"))
    index.apply_event("a", stored(1, "sliding_window", WINDOW))
    index.apply_event("a", stored(2, "sliding_window", 12))
    index.apply_event("a", removed(1, 0, 1))
    index.apply_event("a", removed(2, 4, 5))
    # group 2's right-most run of 3 ends at block 4 (blocks 1-3); group 1 holds blocks 2-3 before it: 4.
    assert index.match("a", KEYS) == 4


def test_speculative_entries_stand_in_for_every_group() -> None:
    index = hybrid(0, 1, 2, 3, 4, 5)  # the sliding group holds nothing of this prompt
    assert index.match("a", KEYS) == 0
    longer = chain_keys([*TOKENS, *range(8)], BS)
    index.insert("a", longer, ttl_s=2.0)  # routed here: the engine will compute and hold all of it
    assert index.match("a", longer) == 8


def test_capacity_counts_a_block_per_group() -> None:
    # The engine's num_gpu_blocks is one pool shared by the groups: 6 keys in two groups are 12 blocks.
    index = hybrid()
    index.set_capacity("a", 12)
    assert index.endpoint_size("a") == 6
    index.set_capacity("a", 10)  # the oldest keys go whole until the held blocks fit
    assert index.endpoint_size("a") == 5
    assert index.counters.evicted_blocks == 2


def test_a_group_with_another_block_size_is_not_indexed() -> None:
    index = hybrid()
    other = BlockStored(
        block_hashes=tuple(block_hashes(TOKENS, 8)),
        parent_block_hash=None,
        token_ids=tuple(TOKENS),
        block_size=8,
        group_idx=2,
        kv_cache_spec_kind="mamba",
    )
    assert index.apply_event("a", other) == 0
    assert index.counters.ignored_events == 1
    assert index.match("a", KEYS) == 6


def test_events_without_groups_index_as_before() -> None:
    # Engines before the hybrid manager, and vLLM for models of one kind, publish group 0 or no group at all.
    index = PrefixIndex()
    plain = BlockStored(tuple(HASHES), None, tuple(TOKENS), BS)
    index.apply_event("a", plain)
    index.apply_event("a", BlockRemoved(block_hashes=(HASHES[2],)))
    assert index.match("a", KEYS) == 2


@pytest.mark.parametrize("encoding", ["map", "array"])
def test_group_fields_survive_the_wire(encoding: str) -> None:
    batch = EventBatch(
        ts=1.0,
        events=(stored(0, "full_attention"), stored(1, "sliding_window", WINDOW), removed(1, 4, 5)),
        data_parallel_rank=0,
    )
    index = PrefixIndex()
    for event in decode_batch(encode_batch(batch, encoding)).events:
        index.apply_event("a", event)
    assert index.match("a", KEYS) == 4


@pytest.mark.parametrize("sliding_first", [True, False])
def test_a_sliding_event_that_lists_only_the_tail_it_keeps(sliding_first: bool) -> None:
    # vLLM 0.32 (prefix_cache_retention_interval 0, the default) caches a sliding group's blocks only where a
    # later hit can end: the window before the prompt's replay boundary. Its BlockStored lists those hashes
    # alone while token_ids span every block; the full group's event names them. gpt-oss's sliding group is
    # group 0, published before the full group (a vLLM 0.32 capture: docs/live.md), so both orders occur.
    tail = stored(0 if sliding_first else 1, "sliding_window", WINDOW, listed=(HASHES[4], HASHES[5]))
    full = stored(1 if sliding_first else 0, "full_attention")
    index = PrefixIndex()
    for event in (tail, full) if sliding_first else (full, tail):
        index.apply_event("a", event)
    assert index.match("a", KEYS) == 6  # the same prompt again: a whole hit
    sibling = chain_keys([*TOKENS[:16], *range(900, 908)], BS)  # shares blocks 0-3, then diverges
    assert index.match("a", sibling) == 0  # no window of the sliding group ends inside the shared part
    index.set_capacity("a", 8)  # 6 full blocks + 2 sliding ones: all held, none trimmed
    assert index.endpoint_size("a") == 6
    index.set_capacity("a", 7)
    assert index.endpoint_size("a") == 5


def test_pending_hashes_stay_bounded() -> None:
    # Sparse events whose naming event never comes (lost) leave their hashes waiting, up to a bound.
    index = PrefixIndex()
    for i in range(5000):
        index.apply_event("a", stored(0, "sliding_window", WINDOW, list(range(8)), listed=(i,)))
    assert index.endpoint_size("a") == 0
    assert len(index._endpoints["a"].pending) <= 4096


def test_a_block_stored_twice_stays_until_both_copies_go() -> None:
    # vLLM recomputes the last block of a repeated prompt (a hit stops at len - 1 tokens) and caches it in a
    # second physical block under the same hash; each copy it evicts gets its own BlockRemoved.
    index = PrefixIndex()
    index.apply_event("a", stored(0, "full_attention"))
    last = BlockStored(
        (HASHES[5],), HASHES[4], tuple(TOKENS[20:]), BS, group_idx=0, kv_cache_spec_kind="full_attention"
    )
    assert index.apply_event("a", last) == 1
    assert index.apply_event("a", removed(0, 5)) == 1
    assert index.match("a", KEYS) == 6  # the other copy still holds block 5
    assert index.apply_event("a", removed(0, 5)) == 1
    assert index.match("a", KEYS) == 5
    index.apply_event("a", last)
    index.apply_event("a", last)
    index.set_capacity("a", 6)  # 6 blocks and a copy are 7 in the pool: the oldest key goes
    assert index.endpoint_size("a") == 5
