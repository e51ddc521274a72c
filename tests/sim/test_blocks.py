"""Block pool: hits, LRU eviction order (tail of a freed prefix first), events, usage (vLLM's BlockPool)."""

from __future__ import annotations

from eksinfer.kvcache.events import BlockRemoved, BlockStored
from eksinfer.kvcache.hashing import block_digests, block_hashes
from eksinfer.sim.blocks import BlockPool, BlockTable


def _fill(pool: BlockPool, tokens: list[int]) -> BlockTable:
    table = BlockTable()
    digests = block_digests(tokens, pool.block_size)
    hits = pool.longest_hit(digests, (len(tokens) - 1) // pool.block_size)
    assert pool.allocate(table, len(tokens), hits)
    pool.cache_full_blocks(table, digests, tokens, len(tokens))
    return table


def test_usage_excludes_null_block_and_counts_held_blocks() -> None:
    pool = BlockPool(11, 4)  # 10 usable
    assert pool.num_free_blocks == 10
    table = _fill(pool, list(range(10)))  # 3 blocks (4 + 4 + 2)
    assert pool.num_free_blocks == 7
    assert abs(pool.usage() - 0.3) < 1e-12
    pool.free(table)
    assert pool.usage() == 0.0
    assert pool.num_cached_blocks == 2  # freed blocks stay cached (only the 2 full ones were hashed)


def test_hit_takes_cached_blocks_and_caps_at_num_tokens_minus_one() -> None:
    pool = BlockPool(11, 4)
    first = _fill(pool, list(range(12)))
    pool.free(first)
    digests = block_digests(list(range(12)), 4)
    # all 3 blocks are cached, but a request of exactly 12 tokens may reuse only (12 - 1) // 4 = 2
    assert len(pool.longest_hit(digests, (12 - 1) // 4)) == 2
    assert len(pool.longest_hit(digests, 3)) == 3
    other = block_digests([9, *range(1, 12)], 4)
    assert pool.longest_hit(other, 3) == []  # first block differs: nothing after it can match


def test_lru_eviction_takes_oldest_freed_and_tail_first() -> None:
    pool = BlockPool(5, 4, emit_events=True)  # 4 usable
    a = _fill(pool, list(range(8)))  # blocks a0 a1
    pool.free(a)
    b = _fill(pool, list(range(100, 108)))  # takes the 2 never-used blocks
    pool.free(b)
    pool.take_events()
    # free queue now: a1, a0, b1, b0 (each request's blocks tail first, oldest request first)
    c = BlockTable()
    assert pool.allocate(c, 4, ())
    (removed,) = pool.take_events()
    assert removed == BlockRemoved(
        block_hashes=(block_hashes(list(range(8)), 4)[1],), medium="GPU", group_idx=0
    )
    a_digests = block_digests(list(range(8)), 4)
    assert pool.is_cached(a_digests[0])
    assert not pool.is_cached(a_digests[1])
    # a's head block is still there, so a repeat of a hits 1 block
    assert len(pool.longest_hit(a_digests, 2)) == 1


def test_block_stored_events_chain_parents() -> None:
    pool = BlockPool(11, 4, emit_events=True)
    tokens = list(range(10))
    table = BlockTable()
    digests = block_digests(tokens, 4)
    assert pool.allocate(table, 6, ())
    pool.cache_full_blocks(table, digests, tokens, 6)  # first chunk: block 0 only
    assert pool.allocate(table, 10, ())
    pool.cache_full_blocks(table, digests, tokens, 10)  # second chunk: block 1
    first, second = pool.take_events()
    ids = block_hashes(tokens, 4)
    assert isinstance(first, BlockStored)
    assert isinstance(second, BlockStored)
    assert first.block_hashes == (ids[0],)
    assert first.parent_block_hash is None
    assert first.token_ids == (0, 1, 2, 3)
    assert second.block_hashes == (ids[1],)
    assert second.parent_block_hash == ids[0]
    assert second.token_ids == (4, 5, 6, 7)
    assert second.group_idx == 0
    assert second.kv_cache_spec_kind == "full_attention"
    assert second.extra_keys == (None,)


def test_allocation_fails_without_change_when_short() -> None:
    pool = BlockPool(4, 4)  # 3 usable
    table = BlockTable()
    assert not pool.allocate(table, 13, ())
    assert table.blocks == []
    assert pool.num_free_blocks == 3


def test_shared_blocks_need_both_frees() -> None:
    pool = BlockPool(11, 4)
    tokens = list(range(9))
    a = _fill(pool, tokens)
    b = _fill(pool, tokens)  # hits a's 2 full blocks while a still runs
    assert b.blocks[:2] == a.blocks[:2]
    assert pool.num_free_blocks == 10 - 4  # a: 3 blocks, b: 1 new
    pool.free(a)
    assert pool.num_free_blocks == 10 - 3
    pool.free(b)
    assert pool.num_free_blocks == 10


def test_a_hit_takes_a_free_block_out_of_the_middle_of_the_queue() -> None:
    pool = BlockPool(7, 4)  # 6 usable
    a = _fill(pool, list(range(8)))  # a0 a1, both cached
    x = _fill(pool, list(range(200, 210)))  # x0 x1 x2 (x0, x1 cached)
    pool.free(a)
    pool.free(x)
    a0, a1 = 1, 2
    # vLLM 0.32 `free_blocks`: a block never cached (x's partial x2 = 5) goes to the front, to be reused
    # first; cached ones join the back, a table's tail first. Then the never-used 6, a's, x's cached two.
    assert pool.free_block_ids() == [5, 6, a1, a0, 4, 3]
    again = _fill(pool, [*range(4), 99, 98, 97])  # hits a0 only: it leaves the middle of the queue
    assert again.blocks[0].block_id == a0
    assert pool.free_block_ids() == [6, a1, 4, 3]  # 5 went to again's second block; a0 is skipped
    assert pool.num_free_blocks == 4
    b = BlockTable()
    assert pool.allocate(b, 8, ())  # the next two from the front: 6, then a1 (evicted), not a0
    assert [blk.block_id for blk in b.blocks] == [6, a1]
    pool.free(again)  # its partial block to the front, a0 to the back, behind its stale entry's place
    assert pool.free_block_ids() == [5, 4, 3, a0]
    c = BlockTable()
    assert pool.allocate(c, 16, ())
    assert [blk.block_id for blk in c.blocks] == [5, 4, 3, a0]
    assert pool.num_free_blocks == 0
    assert pool.free_block_ids() == []
