"""The paged KV-cache block pool with prefix caching, as vLLM's v1 `BlockPool` + `KVCacheManager` behave.

Algorithm (vllm/v1/core/block_pool.py, kv_cache_manager.py, kv_cache_utils.py `FreeKVCacheBlockQueue`):
- `num_gpu_blocks` blocks of `block_size` tokens; block 0 is vLLM's reserved null block, so
  `num_gpu_blocks - 1` are usable and `kv_cache_usage_perc = 1 - free / (num_gpu_blocks - 1)`.
- Free blocks sit in one LRU queue (initially by id). Allocation pops from the front; a popped block that
  still holds a cached hash is evicted then (BlockRemoved). Freed cached blocks join the back, a request's
  blocks in reverse order, so the tail of a prefix goes before its head; freed blocks that never cached a
  hash go to the front, to be reused first (vLLM 0.32 `BlockPool.free_blocks`, which keeps the cached ones
  for the prefix cache as long as it can).
- A full block is cached under its chained hash as soon as its tokens are known and scheduled
  (`allocate_slots` caches `min(computed + new, num_tokens)` tokens) and a BlockStored names it.
- A cache hit takes a cached block out of the free queue (ref count 0 -> 1) or shares it (ref count + 1).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from eksinfer.kvcache.events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from eksinfer.kvcache.hashing import BlockDigest, ExtraKeys, event_extra_keys, to_block_hash


class Block:
    """One KV block. `ref_cnt` counts the tables holding it (0 for a free cached block); a block without a
    digest can only be held by the table that allocated it, so `free` returns such blocks without touching
    their count (it is reset when the block is next allocated; nothing reads it in between). `skips` counts
    the block's stale entries in the free queue (see `BlockPool`)."""

    __slots__ = ("block_id", "digest", "group", "ref_cnt", "skips")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.skips = 0
        self.digest: BlockDigest | None = None
        self.group = 0  # the KV-cache group whose hash the block caches (sim.hybrid)


@dataclass(slots=True)
class BlockTable:
    """The blocks one request holds, and how many of them are cached (hashed) already."""

    blocks: list[Block] = field(default_factory=list)
    num_cached: int = 0
    # sim.hybrid: one block list per KV-cache group (`blocks` is the first full group's), the blocks each
    # group has cached, and the shared-prefix junction (tokens) the request's hit marked
    groups: list[list[Block]] | None = None
    cached: list[int] | None = None
    junction: int = 0


class BlockPool:
    """Blocks, the LRU free queue, the hash -> block map, and the KV events they produce.

    The free queue is a deque with lazy removal, so freeing a request's blocks is one C-level `extend` (the
    fleet simulation frees some 80 blocks per request, 200,000 requests a day): a cache hit that takes a
    free block out of the middle leaves its entry behind as stale and counts it in the block's `skips`; a
    block's stale entries are always its oldest ones (it is queued again only after it left), so popping
    from the front skips an entry exactly when its block still has skips to spend.
    """

    hybrid = False  # sim.hybrid.HybridBlockPool: KV-cache groups of full and sliding-window attention

    def __init__(
        self, num_gpu_blocks: int, block_size: int, *, enable_caching: bool = True, emit_events: bool = False
    ) -> None:
        if num_gpu_blocks < 2:
            raise ValueError("need at least 2 blocks (one is the reserved null block)")
        self.block_size = block_size
        self.num_gpu_blocks = num_gpu_blocks
        self.enable_caching = enable_caching
        self.emit_events = emit_events
        self._blocks = [Block(i) for i in range(num_gpu_blocks)]
        self._queue: deque[Block] = deque(self._blocks[1:])  # the free queue, with stale entries
        self._num_free = num_gpu_blocks - 1
        # hash -> blocks, one map per KV-cache group (sim.hybrid adds groups); `_cached` is group 0's
        self._by_group: list[dict[bytes, dict[int, Block]]] = [{}]
        self._cached = self._by_group[0]
        self.events: list[KVEvent] = []

    # --- queries ------------------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return self._num_free

    @property
    def num_cached_blocks(self) -> int:
        return sum(len(v) for cached in self._by_group for v in cached.values())

    def usage(self) -> float:
        return 1.0 - self._num_free / (self.num_gpu_blocks - 1)

    def free_block_ids(self) -> list[int]:
        """The free queue's block ids, front (next to allocate) first."""
        skips = {b.block_id: b.skips for b in self._queue if b.skips}
        out = []
        for b in self._queue:
            if skips.get(b.block_id):
                skips[b.block_id] -= 1
            else:
                out.append(b.block_id)
        return out

    def is_cached(self, digest: bytes) -> bool:
        return digest in self._cached

    def longest_hit(self, digests: Sequence[bytes], max_blocks: int) -> list[Block]:
        """Cached blocks for the longest prefix of `digests`, at most `max_blocks` of them."""
        if not self.enable_caching:
            return []
        hit: list[Block] = []
        cached = self._cached
        for digest in digests[:max_blocks]:
            entry = cached.get(digest)
            if entry is None:
                break
            hit.append(next(iter(entry.values())))
        return hit

    # --- allocation ---------------------------------------------------------------------------------------

    def blocks_to_allocate(
        self, table: BlockTable, num_tokens: int, hits: Sequence[Block], *, admission: bool = False
    ) -> int:
        """Free blocks needed to hold `num_tokens` tokens, counting evictable hits it takes off the queue
        (`admission`: the whole-sequence check before a request starts; the hybrid pool caps it)."""
        need = -(-num_tokens // self.block_size) - len(table.blocks) - len(hits)
        return max(need, 0) + sum(1 for b in hits if b.ref_cnt == 0)

    def allocate(self, table: BlockTable, num_tokens: int, hits: Sequence[Block]) -> bool:
        """Grow `table` to hold `num_tokens` tokens, touching `hits` first; False (no change) if short."""
        if self.blocks_to_allocate(table, num_tokens, hits) > self._num_free:
            return False
        for block in hits:
            if block.ref_cnt == 0:  # a free cached block: its queue entry goes stale
                block.skips += 1
                self._num_free -= 1
            block.ref_cnt += 1
        blocks = table.blocks
        blocks.extend(hits)
        table.num_cached += len(hits)
        new = -(-num_tokens // self.block_size) - len(blocks)
        if new <= 0:
            return True
        self._num_free -= new
        popleft, append = self._queue.popleft, blocks.append
        while new:
            block = popleft()
            if block.skips:
                block.skips -= 1
                continue
            if block.digest is not None:
                self._evict(block)
            block.ref_cnt = 1
            append(block)
            new -= 1
        return True

    def append_block(self, table: BlockTable) -> None:
        """Grow `table` by one block from the free queue, which the caller knows is not empty: the fast path
        for a decode step that crosses a block boundary (the fleet simulation replays thousands)."""
        popleft = self._queue.popleft
        block = popleft()
        while block.skips:
            block.skips -= 1
            block = popleft()
        self._num_free -= 1
        if block.digest is not None:
            self._evict(block)
        block.ref_cnt = 1
        table.blocks.append(block)

    def _evict(self, block: Block) -> None:
        digest = block.digest
        if digest is None:
            return
        block.digest = None
        cached = self._by_group[block.group]
        entry = cached.get(digest)
        if entry is None or entry.pop(block.block_id, None) is None:
            return
        if not entry:
            del cached[digest]
        if self.emit_events:
            self.events.append(
                BlockRemoved(block_hashes=(to_block_hash(digest),), medium="GPU", group_idx=block.group)
            )

    def cache_full_blocks(
        self,
        table: BlockTable,
        digests: Sequence[BlockDigest],
        token_ids: Sequence[int],
        num_tokens: int,
        *,
        lora_id: int | None = None,
        lora_name: str | None = None,
        extra_keys: Callable[[int], ExtraKeys] | None = None,
        num_prompt_tokens: int = 0,
    ) -> None:
        """Cache the table's blocks that are full within the first `num_tokens` tokens (and hashed).

        `extra_keys(i)` gives block i's tagged hash keys; the BlockStored event carries them untagged.
        `num_prompt_tokens` places the hybrid pool's replay boundary; this pool caches every full block.
        """
        if not self.enable_caching:
            return
        num_full = min(num_tokens // self.block_size, len(digests), len(table.blocks))
        first = table.num_cached
        if num_full <= first:
            return
        for i in range(first, num_full):
            block = table.blocks[i]
            block.digest = digests[i]
            self._cached.setdefault(digests[i], {})[block.block_id] = block
        table.num_cached = num_full
        if self.emit_events:
            bs = self.block_size
            extra = tuple(
                event_extra_keys(extra_keys(i)) if extra_keys is not None else None
                for i in range(first, num_full)
            )
            self.events.append(
                BlockStored(
                    block_hashes=tuple(to_block_hash(d) for d in digests[first:num_full]),
                    parent_block_hash=to_block_hash(digests[first - 1]) if first > 0 else None,
                    token_ids=tuple(token_ids[first * bs : num_full * bs]),
                    block_size=bs,
                    lora_id=lora_id,
                    medium="GPU",
                    lora_name=lora_name,
                    extra_keys=extra,
                    group_idx=0,
                    kv_cache_spec_kind="full_attention",
                )
            )

    def free(self, table: BlockTable) -> None:
        """Release a request's blocks; the ones nobody else holds join the free queue, tail first."""
        queue = self._queue
        blocks = table.blocks
        head = table.num_cached  # only cached blocks can be shared; the rest have one holder, this table
        if head < len(blocks):  # never cached: to the front, tail first (vLLM 0.32 reuses them first)
            queue.extendleft(blocks[head:])
            self._num_free += len(blocks) - head
        for block in reversed(blocks[:head]):
            n = block.ref_cnt - 1
            block.ref_cnt = n
            if not n:
                queue.append(block)
                self._num_free += 1
        table.blocks = []
        table.num_cached = 0

    def remove_skipped(self, table: BlockTable, num_computed_tokens: int) -> None:
        """Free the blocks no attention reads any more (sliding windows: sim.hybrid); none here."""

    def reset_prefix_cache(self) -> bool:
        """Drop every cached hash (vLLM's /reset_prefix_cache); only when no block is in use."""
        if self._num_free != self.num_gpu_blocks - 1:
            return False
        for block in self._blocks:
            block.digest = None
        for cached in self._by_group:
            cached.clear()
        if self.emit_events:
            self.events.append(AllBlocksCleared())
        return True

    def take_events(self) -> list[KVEvent]:
        events, self.events = self.events, []
        return events
