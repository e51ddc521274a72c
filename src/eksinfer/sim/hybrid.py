"""vLLM's hybrid KV-cache manager, for models with sliding-window layers (gpt-oss), on the simulator's pool.

vLLM 0.32 keeps each attention kind's layers in KV-cache groups of their own that draw blocks from one pool
(vllm/v1/core/kv_cache_coordinator.py `HybridKVCacheCoordinator`, single_type_kv_cache_manager.py
`SlidingWindowManager`, block_pool.py), and this pool does the same, checked against a capture of a real
vLLM 0.32 (tests/sim/test_hybrid_golden.py):
- groups are numbered by layer 0's kind first (gpt-oss: the sliding group is 0, the full group 1); a request
  holds a block table per group, all growing one block per `block_size` tokens;
- before each step's allocation a sliding group frees the blocks that fell out of its window
  (`remove_skipped_blocks`), leaving the null block (block 0) in their place;
- a prefix hit is the run of blocks every full group caches, cut back to where the sliding groups cache the
  cdiv(window - 1, block_size) blocks before it (with no such run, the blocks they cache from the start); a
  longer full-group run marks a shared-prefix junction;
- full groups cache every full block; with `prefix_cache_retention_interval` 0 (vLLM's default) a sliding
  group caches only the blocks ending at the prompt's replay boundary (num_prompt_tokens - 1, floored to a
  block) and at the junction (`reachable_block_mask`); each group publishes a BlockStored per step listing the
  hashes it cached, its `token_ids` spanning the whole range;
- a freed block without a hash goes to the front of the free queue (reused first), a cached one to the back
  (`BlockPool.free_blocks`), group by group, each table tail first;
- admission reserves at most cdiv(min(window - 1 + in-flight tokens, max_model_len), block_size) + 1 blocks in
  a sliding group (`SlidingWindowSpec.max_admission_blocks_per_request`).
The simulator runs one step at a time, so blocks are freed on the computed-token basis (vLLM frees on the
processed one, a step later with async scheduling).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from eksinfer.kvcache.events import BlockStored
from eksinfer.kvcache.hashing import BlockDigest, ExtraKeys, event_extra_keys, to_block_hash
from eksinfer.sim.blocks import Block, BlockPool, BlockTable

Kind = Literal["full_attention", "sliding_window"]
FULL: Kind = "full_attention"
SLIDING: Kind = "sliding_window"


def group_kinds(full_groups: int, sliding_groups: int, sliding_first: bool) -> tuple[Kind, ...]:
    """vLLM's KV-cache groups in index order: the kind of layer 0 first."""
    full, sliding = (FULL,) * full_groups, (SLIDING,) * sliding_groups
    return sliding + full if sliding_first else full + sliding


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class HybridHit(list[Block]):
    """A prefix hit: the first full group's blocks (what the scheduler counts), each group's blocks (null
    where a sliding group needs none) and the junction, in tokens, that a longer full-group run marks."""

    def __init__(self, per_group: list[list[Block]], first_full: int, junction: int) -> None:
        super().__init__(per_group[first_full] if per_group else ())
        self.per_group = per_group
        self.junction = junction


class HybridBlockPool(BlockPool):
    """One block pool shared by full and sliding-window KV-cache groups; see the module docstring."""

    hybrid = True

    def __init__(
        self,
        num_gpu_blocks: int,
        block_size: int,
        *,
        kinds: Sequence[Kind],
        sliding_window: int,
        max_model_len: int,
        in_flight_tokens: int,
        enable_caching: bool = True,
        emit_events: bool = False,
    ) -> None:
        super().__init__(num_gpu_blocks, block_size, enable_caching=enable_caching, emit_events=emit_events)
        if FULL not in kinds or SLIDING not in kinds or sliding_window < 1:
            raise ValueError("a hybrid pool needs full and sliding-window groups and a window")
        self.kinds = tuple(kinds)
        self.window = sliding_window
        self.need = _cdiv(sliding_window - 1, block_size)  # contiguous blocks a sliding hit ends with
        self.full_groups = [g for g, k in enumerate(self.kinds) if k == FULL]
        self.sliding_groups = [g for g, k in enumerate(self.kinds) if k == SLIDING]
        self.admission_blocks = (
            _cdiv(min(sliding_window - 1 + in_flight_tokens, max_model_len), block_size) + 1
        )
        self.null = self._blocks[0]
        self._by_group += [{} for _ in self.kinds[1:]]

    # --- queries ------------------------------------------------------------------------------------------

    def is_cached(self, digest: bytes) -> bool:
        return all(digest in self._by_group[g] for g in self.full_groups)

    def longest_hit(self, digests: Sequence[bytes], max_blocks: int) -> list[Block]:
        """vLLM's hybrid hit for the first `max_blocks` digests (a `HybridHit`)."""
        if not self.enable_caching:
            return HybridHit([[] for _ in self.kinds], self.full_groups[0], 0)
        limit = min(len(digests), max_blocks)
        full = 0
        while full < limit and all(digests[full] in self._by_group[g] for g in self.full_groups):
            full += 1
        length, start = full, 0  # the hit, and where the sliding groups' real blocks start
        if full:
            run, length = 0, -1
            for i in range(full - 1, -1, -1):
                if all(digests[i] in self._by_group[g] for g in self.sliding_groups):
                    run += 1
                    if run >= self.need:
                        length, start = i + self.need, i
                        break
                else:
                    run = 0
            if length < 0:
                length = run  # no window anywhere: the blocks cached from the start
        per_group: list[list[Block]] = []
        for g, kind in enumerate(self.kinds):
            first = start if kind == SLIDING else 0
            cached = self._by_group[g]
            real = [next(iter(cached[d].values())) for d in digests[first:length]]
            per_group.append([self.null] * first + real)
        junction = full * self.block_size if full > length else 0
        return HybridHit(per_group, self.full_groups[0], junction)

    # --- allocation ---------------------------------------------------------------------------------------

    def _skipped_blocks(self, computed_tokens: int) -> int:
        """Leading blocks no token after the first `computed_tokens` attends to (`get_num_skipped_tokens`)."""
        return max(0, computed_tokens - self.window + 1) // self.block_size

    def _groups(self, table: BlockTable) -> list[list[Block]]:
        if table.groups is None:
            first_full = self.full_groups[0]
            table.blocks = []
            table.groups = [table.blocks if g == first_full else [] for g in range(len(self.kinds))]
            table.cached = [0] * len(self.kinds)
        return table.groups

    @staticmethod
    def _group_hits(hits: Sequence[Block], group: int) -> list[Block]:
        return hits.per_group[group] if isinstance(hits, HybridHit) else []

    def blocks_to_allocate(
        self, table: BlockTable, num_tokens: int, hits: Sequence[Block], *, admission: bool = False
    ) -> int:
        """Free blocks every group needs for `num_tokens` tokens (`get_num_blocks_to_allocate`)."""
        held = table.groups
        computed = len(hits) * self.block_size
        total = 0
        for g, kind in enumerate(self.kinds):
            required = _cdiv(num_tokens, self.block_size)
            if kind == SLIDING and admission:
                required = min(required, self.admission_blocks)
            if held is not None and held[g]:  # a running request: no new hits
                total += max(required - len(held[g]), 0)
                continue
            group_hits = self._group_hits(hits, g)
            skipped = self._skipped_blocks(computed) if kind == SLIDING else 0
            total += max(required - max(skipped, len(group_hits)), 0)
            total += sum(1 for b in group_hits[skipped:] if b is not self.null and b.ref_cnt == 0)
        return total

    def allocate(self, table: BlockTable, num_tokens: int, hits: Sequence[Block]) -> bool:
        """Grow every group's table to `num_tokens` tokens, touching `hits` first; False (no change) if
        short."""
        if self.blocks_to_allocate(table, num_tokens, hits) > self._num_free:
            return False
        new_request = table.groups is None or not any(table.groups)
        groups = self._groups(table)
        assert table.cached is not None
        if new_request:
            computed = len(hits) * self.block_size
            for g, kind in enumerate(self.kinds):
                skipped = self._skipped_blocks(computed) if kind == SLIDING else 0
                kept = self._group_hits(hits, g)[skipped:]
                for block in kept:
                    if block is self.null:
                        continue
                    if block.ref_cnt == 0:  # a free cached block: its queue entry goes stale
                        block.skips += 1
                        self._num_free -= 1
                    block.ref_cnt += 1
                groups[g].extend([self.null] * skipped)
                groups[g].extend(kept)
                table.cached[g] = len(groups[g])
            table.junction = hits.junction if isinstance(hits, HybridHit) else 0
        required = _cdiv(num_tokens, self.block_size)
        for blocks in groups:
            for _ in range(required - len(blocks)):
                blocks.append(self._pop_free())
        table.num_cached = table.cached[self.full_groups[0]]
        return True

    def _pop_free(self) -> Block:
        block = self._queue.popleft()
        while block.skips:
            block.skips -= 1
            block = self._queue.popleft()
        self._num_free -= 1
        if block.digest is not None:
            self._evict(block)
        block.ref_cnt = 1
        return block

    def append_block(self, table: BlockTable) -> None:
        raise NotImplementedError("the fleet's decode fast path has one KV-cache group")

    def remove_skipped(self, table: BlockTable, num_computed_tokens: int) -> None:
        """Free the sliding groups' blocks that left the window, last first (`remove_skipped_blocks`)."""
        skipped = self._skipped_blocks(num_computed_tokens)
        if not skipped or table.groups is None:
            return
        for g in self.sliding_groups:
            blocks = table.groups[g]
            freed = []
            for i in range(min(skipped, len(blocks)) - 1, -1, -1):
                if blocks[i] is self.null:
                    break
                freed.append(blocks[i])
                blocks[i] = self.null
            self._release(freed)

    def _release(self, blocks: Sequence[Block]) -> None:
        """vLLM 0.32's `free_blocks`: one holder less each; of the unheld, blocks without a hash go to the
        front of the free queue in this order (reused first), cached ones to the back (evicted last)."""
        front: list[Block] = []
        back: list[Block] = []
        for block in blocks:
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                (front if block.digest is None else back).append(block)
        self._queue.extendleft(reversed(front))
        self._queue.extend(back)
        self._num_free += len(front) + len(back)

    def free(self, table: BlockTable) -> None:
        """Release every group's blocks, group by group, each tail first (`KVCacheCoordinator.free`)."""
        if table.groups is not None:
            for blocks in table.groups:
                self._release([b for b in reversed(blocks) if b is not self.null])
        table.groups = table.cached = None
        table.blocks = []
        table.num_cached = table.junction = 0

    # --- caching ------------------------------------------------------------------------------------------

    def _retained(self, first: int, end: int, num_prompt_tokens: int, junction: int) -> set[int]:
        """The blocks in [first, end) a sliding group caches: the window before each reachable boundary."""
        out: set[int] = set()
        for boundary in (num_prompt_tokens - 1, junction):
            if boundary > 0:
                stop = boundary // self.block_size
                out.update(range(max(first, stop - self.need), min(end, stop)))
        return out

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
        """Cache each group's full blocks within `num_tokens` tokens as its kind does, one event a group."""
        if not self.enable_caching or table.groups is None or table.cached is None:
            return
        bs = self.block_size
        num_full = min(num_tokens // bs, len(digests))
        for g, kind in enumerate(self.kinds):
            blocks, first = table.groups[g], table.cached[g]
            end = min(num_full, len(blocks))
            if end <= first:
                continue
            kept = self._retained(first, end, num_prompt_tokens, table.junction) if kind == SLIDING else None
            listed = []
            cached = self._by_group[g]
            for i in range(first, end):
                block = blocks[i]
                if block is self.null or (kept is not None and i not in kept):
                    continue
                block.digest, block.group = digests[i], g
                cached.setdefault(digests[i], {})[block.block_id] = block
                listed.append(i)
            table.cached[g] = end
            if self.emit_events:
                self.events.append(
                    BlockStored(
                        block_hashes=tuple(to_block_hash(digests[i]) for i in listed),
                        parent_block_hash=to_block_hash(digests[first - 1]) if first > 0 else None,
                        token_ids=tuple(token_ids[first * bs : end * bs]),
                        block_size=bs,
                        lora_id=lora_id,
                        medium="GPU",
                        lora_name=lora_name,
                        extra_keys=tuple(
                            event_extra_keys(extra_keys(i)) if extra_keys is not None else None
                            for i in listed
                        )
                        or None,  # vLLM leaves the field out of an event that lists no block
                        group_idx=g,
                        kv_cache_spec_kind=kind,
                        kv_cache_spec_sliding_window=self.window if kind == SLIDING else None,
                    )
                )
        table.num_cached = table.cached[self.full_groups[0]]
