"""Which endpoint holds which prefix blocks: a bounded, per-endpoint LRU of block keys fed by KV events.

Keys ("dual-key" design, as llm-d-kv-cache and Dynamo do; see docs/routing.md): the index never compares
vLLM's own block hashes with hashes of the request. It recomputes its own key chain from each `BlockStored`
event's `token_ids` (`chain_keys`) and keeps `engine hash -> key` per endpoint only to apply `BlockRemoved`.
Request keys come from the same function over the request's token ids, so matching is immune to the engine's
hash algorithm, `PYTHONHASHSEED` and the int/bytes publishing mode. A key is Python's tuple hash of
`(parent_key, block_token_ids, extra_keys)`; int and tuple hashing is not salted per process (only str/bytes
are, and those only enter through LoRA names and cache salts, hashed on both sides in this one process).

Bounds: each endpoint keeps at most `capacity` entries (its `num_gpu_blocks`, from `vllm:cache_config_info`,
or `default_capacity_blocks`), evicting least recently stored or routed first, as vLLM's free-block queue
evicts.

Speculative entries: after routing, the router inserts the request's keys for the chosen endpoint with a short
TTL (llm-d's `speculativeTTL`, 2 s) so the next request of a burst sees them before the engine's `BlockStored`
arrives; a later `BlockStored` for the same key confirms it. Expired entries are dropped when a match reaches
them.

Longest-prefix match walks the request's key chain per endpoint and stops at the first missing key:
O(matched).

Hybrid engines (vLLM's hybrid KV-cache manager: full-attention and sliding-window layers in separate KV-cache
groups drawing on one block pool, e.g. gpt-oss) publish each block once per group, with the same hash and
the group's `group_idx` / `kv_cache_spec_kind` / `kv_cache_spec_sliding_window`. An entry records which groups
hold it, a `BlockRemoved` clears its group only, and `match` applies vLLM's hybrid hit rule (a sliding group
needs only the window before the hit). The bound counts one block per holding group, as the pool does.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BlockKey = int
ENGINE_HASH_MASK = (1 << 64) - 1
# The root parent of every chain (the first block of a prompt); any fixed odd 64-bit constant works.
ROOT_KEY: BlockKey = 0x9E3779B97F4A7C15

ExtraKeys = tuple[Any, ...] | None


def _freeze(value: Any) -> Any:
    """msgpack turns vLLM's tuples into lists; hashing needs tuples all the way down."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def engine_hash(value: int | bytes) -> int:
    """Normalise a published block hash: bytes -> last 8 bytes big-endian (vLLM's int projection), ints to
    u64."""
    if isinstance(value, bytes | bytearray):
        return int.from_bytes(bytes(value)[-8:], "big")
    return int(value) & ENGINE_HASH_MASK


def request_extra_keys(num_blocks: int, lora_name: str | None, cache_salt: str | None) -> list[ExtraKeys]:
    """Per-block extra keys in vLLM's order: the LoRA name on every block, the cache salt on block 0 only
    (vllm/v1/core/kv_cache_utils.py, `generate_block_hash_extra_keys`)."""
    extras: list[ExtraKeys] = []
    for i in range(num_blocks):
        parts: list[Any] = [lora_name] if lora_name else []
        if i == 0 and cache_salt:
            parts.append(cache_salt)
        extras.append(tuple(parts) if parts else None)
    return extras


def chain_keys(
    token_ids: Sequence[int],
    block_size: int,
    *,
    parent: BlockKey = ROOT_KEY,
    extra_keys: Sequence[Any] | None = None,
    max_blocks: int | None = None,
) -> list[BlockKey]:
    """Keys of the full blocks of `token_ids` chained from `parent`; a trailing partial block has no key
    (vLLM caches full blocks only)."""
    num_blocks = len(token_ids) // block_size
    if max_blocks is not None:
        num_blocks = min(num_blocks, max_blocks)
    keys: list[BlockKey] = []
    key = parent
    if extra_keys is None or not any(extra_keys):  # the common case: no LoRA, no salt
        for start in range(0, num_blocks * block_size, block_size):
            key = hash((key, tuple(token_ids[start : start + block_size]), None))
            keys.append(key)
        return keys
    for i in range(num_blocks):
        extra = _freeze(extra_keys[i]) if i < len(extra_keys) else None
        key = hash((key, tuple(token_ids[i * block_size : (i + 1) * block_size]), extra))
        keys.append(key)
    return keys


def text_keys(
    text: str, block_chars: int, *, salt: str = "", max_blocks: int | None = None
) -> list[BlockKey]:
    """Approximate keys over character blocks (no tokenizer): llm-d's approximate prefix producer uses
    blocks of `block_size_tokens * 4` characters; the trailing partial block is not keyed here."""
    num_blocks = len(text) // block_chars
    if max_blocks is not None:
        num_blocks = min(num_blocks, max_blocks)
    key = hash((ROOT_KEY, salt))
    keys: list[BlockKey] = []
    for i in range(num_blocks):
        key = hash((key, text[i * block_chars : (i + 1) * block_chars]))
        keys.append(key)
    return keys


# Entry.groups while the entry is speculative: every bit set, so it stands in for every KV-cache group.
ALL_GROUPS = -1
# vLLM's KVCacheSpecKind values (vllm/v1/kv_cache_interface.py) of groups that keep only a window of tokens;
# every other kind is matched as a prefix that must be whole (full attention's rule).
SLIDING_KINDS = frozenset({"sliding_window", "sliding_window_mla"})
# Hashes a sparse event listed before any event named their blocks, kept per endpoint (a lost event's would
# otherwise pile up); the naming event follows in the same batch.
PENDING_LIMIT = 4096


@dataclass(slots=True)
class _Entry:
    engine_hash: int | None
    expires_at: float  # math.inf once the engine confirmed the block
    groups: int = ALL_GROUPS  # bit g set: KV-cache group g holds the block (ALL_GROUPS while speculative)

    def weight(self) -> int:
        """Pool blocks the entry stands for: one per holding group (a speculative entry counts one)."""
        return 1 if self.groups < 0 else self.groups.bit_count()


@dataclass(frozen=True, slots=True)
class _Rules:
    """How an endpoint's KV-cache groups decide a hit: the groups every prefix block must be held by, and
    each sliding group's bit with the contiguous blocks its window needs."""

    full_mask: int = 0
    sliding: tuple[tuple[int, int], ...] = ()


class _EndpointBlocks:
    __slots__ = (
        "block_size",
        "capacity",
        "copies",
        "engine_to_key",
        "groups",
        "held",
        "lru",
        "pending",
        "rules",
    )

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lru: OrderedDict[BlockKey, _Entry] = OrderedDict()
        self.engine_to_key: dict[int, BlockKey] = {}
        self.block_size: int | None = None
        self.groups: dict[int, tuple[str, int | None]] = {}  # group_idx -> (kind, sliding window)
        self.held = 0  # sum of the entries' weights, bounded by `capacity` (the engine's num_gpu_blocks)
        self.rules = _Rules()
        # engine hash -> groups whose event listed it before any event named its block (see _named_keys)
        self.pending: dict[int, int] = {}
        # (engine hash, group) -> further physical blocks caching the same block: vLLM stores a block again
        # when it recomputes it (the last block of a repeated prompt; a prefix a hybrid hit could not use) and
        # publishes a BlockRemoved per physical block it evicts
        self.copies: dict[tuple[int, int], int] = {}

    def learn_group(self, group: int, kind: str | None, window: int | None) -> None:
        spec = (kind or "full_attention", window)
        if self.groups.get(group) == spec:
            return
        self.groups[group] = spec
        full, sliding = 0, []
        bs = self.block_size or 1
        for g, (k, w) in sorted(self.groups.items()):
            if k in SLIDING_KINDS and w:
                sliding.append((1 << g, -(-(w - 1) // bs)))  # vLLM: cdiv(sliding_window - 1, block_size)
            else:
                full |= 1 << g
        self.rules = _Rules(full, tuple(sliding))


@dataclass(slots=True)
class IndexCounters:
    stored_blocks: int = 0
    removed_blocks: int = 0
    cleared: int = 0
    evicted_blocks: int = 0
    orphan_events: int = 0  # BlockStored whose parent we never saw (a lost event): cannot be chained
    ignored_events: int = 0


class PrefixIndex:
    """Per-endpoint LRU of block keys; see the module docstring for the key scheme and bounds."""

    def __init__(
        self, *, default_capacity_blocks: int = 65536, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.default_capacity_blocks = default_capacity_blocks
        self._clock = clock
        self._endpoints: dict[str, _EndpointBlocks] = {}
        self.counters = IndexCounters()

    # -- endpoints -------------------------------------------------------------------------------------------
    def _ep(self, endpoint_id: str) -> _EndpointBlocks:
        ep = self._endpoints.get(endpoint_id)
        if ep is None:
            ep = self._endpoints[endpoint_id] = _EndpointBlocks(self.default_capacity_blocks)
        return ep

    def set_capacity(self, endpoint_id: str, num_blocks: int) -> None:
        """Cap an endpoint at its engine's `num_gpu_blocks`, evicting the oldest entries beyond it."""
        ep = self._ep(endpoint_id)
        ep.capacity = max(1, int(num_blocks))
        self._trim(ep)

    def remove_endpoint(self, endpoint_id: str) -> None:
        self._endpoints.pop(endpoint_id, None)

    def clear_endpoint(self, endpoint_id: str) -> None:
        """`AllBlocksCleared` (reset_prefix_cache) or an engine restart: forget everything it held."""
        ep = self._endpoints.get(endpoint_id)
        if ep is not None:
            ep.lru.clear()
            ep.engine_to_key.clear()
            ep.pending.clear()
            ep.copies.clear()
            ep.held = 0
            self.counters.cleared += 1

    def block_size(self, endpoint_id: str) -> int | None:
        """The block size the endpoint's events reported (None before its first BlockStored)."""
        ep = self._endpoints.get(endpoint_id)
        return ep.block_size if ep is not None else None

    def endpoint_ids(self) -> list[str]:
        return list(self._endpoints)

    def endpoint_size(self, endpoint_id: str) -> int:
        ep = self._endpoints.get(endpoint_id)
        return len(ep.lru) if ep is not None else 0

    def size(self) -> int:
        return sum(len(ep.lru) for ep in self._endpoints.values())

    # -- engine events ---------------------------------------------------------------------------------------
    def apply_stored(
        self,
        endpoint_id: str,
        block_hashes: Sequence[int | bytes],
        parent_block_hash: int | bytes | None,
        token_ids: Sequence[int],
        block_size: int,
        *,
        lora_name: str | None = None,
        extra_keys: Sequence[Any] | None = None,
        medium: str | None = None,
        group_idx: int | None = None,
        kv_cache_spec_kind: str | None = None,
        kv_cache_spec_sliding_window: int | None = None,
    ) -> int:
        """Index the blocks of one `BlockStored`; returns how many keys it added or confirmed.

        A hybrid engine (full-attention and sliding-window layers, e.g. gpt-oss) publishes one event per
        KV-cache group with the same hashes; each entry records which groups hold it. Group 0 sets the block
        size the keys are built with; a group with another block size cannot share keys and is not indexed."""
        if medium is not None and medium.upper() != "GPU":
            self.counters.ignored_events += 1  # CPU/disk tiers are not scored (see docs/routing.md)
            return 0
        ep = self._ep(endpoint_id)
        group = group_idx or 0
        if ep.block_size != block_size:
            if ep.block_size is not None and group != 0:
                self.counters.ignored_events += 1
                return 0
            if ep.block_size is not None:  # the engine came back with another block size: old keys are void
                self.clear_endpoint(endpoint_id)
            ep.block_size = block_size
            ep.groups.clear()
        ep.learn_group(group, kv_cache_spec_kind, kv_cache_spec_sliding_window)
        if parent_block_hash is None:
            parent = ROOT_KEY
        else:
            found = ep.engine_to_key.get(engine_hash(parent_block_hash))
            if found is None:
                self.counters.orphan_events += 1
                return 0
            parent = found
        if extra_keys is None and lora_name:
            extra_keys = [(lora_name,)] * len(block_hashes)
        keys: Sequence[BlockKey | None] = chain_keys(
            token_ids, block_size, parent=parent, extra_keys=extra_keys
        )
        bit = 1 << group
        if len(block_hashes) != len(keys):
            keys = self._named_keys(ep, block_hashes, bit)
        for key, raw in zip(keys, block_hashes, strict=True):
            if key is None:
                continue
            h = engine_hash(raw)
            entry = ep.lru.get(key)
            if entry is None:
                entry = ep.lru[key] = _Entry(h, math.inf, 0)
                before = 0
            else:
                if entry.engine_hash is not None and entry.engine_hash != h:
                    ep.engine_to_key.pop(entry.engine_hash, None)
                before = entry.weight()
                if entry.expires_at != math.inf:
                    entry.groups = 0  # a speculative entry, now confirmed group by group
                elif entry.groups & bit:  # a second physical copy of a block the group holds
                    ep.copies[h, group] = ep.copies.get((h, group), 0) + 1
                    ep.held += 1
                entry.engine_hash, entry.expires_at = h, math.inf
                ep.lru.move_to_end(key)
            entry.groups |= bit | (ep.pending.pop(h, 0) if ep.pending else 0)
            ep.held += entry.weight() - before
            ep.engine_to_key[h] = key
        stored = sum(key is not None for key in keys)
        self.counters.stored_blocks += stored
        self._trim(ep)
        return stored

    @staticmethod
    def _named_keys(
        ep: _EndpointBlocks, block_hashes: Sequence[int | bytes], bit: int
    ) -> list[BlockKey | None]:
        """Keys of an event that skipped some blocks of its token range: a sliding-window group caches only
        the blocks a later hit can use (vLLM 0.32 `SlidingWindowManager.reachable_block_mask`: the window
        before the prompt's replay boundary, by default) and null blocks never, while its `token_ids` span the
        whole range. Each listed hash then names its block through the full group's event, which lists
        every hash. vLLM publishes the groups in index order, and gpt-oss's sliding group is group 0, so a
        hash no event has named yet waits in `pending` (bounded) for the one that will, in the same batch."""
        keys: list[BlockKey | None] = []
        for raw in block_hashes:
            h = engine_hash(raw)
            key = ep.engine_to_key.get(h)
            keys.append(key)
            if key is None:
                ep.pending[h] = ep.pending.get(h, 0) | bit
                if len(ep.pending) > PENDING_LIMIT:
                    del ep.pending[next(iter(ep.pending))]
        return keys

    def apply_removed(
        self,
        endpoint_id: str,
        block_hashes: Iterable[int | bytes],
        medium: str | None = None,
        group_idx: int | None = None,
    ) -> int:
        """Drop the blocks of one `BlockRemoved` (the engine evicted them) from the group that held them; an
        entry goes when no group holds it. Unknown hashes are ignored. Returns the blocks removed."""
        if medium is not None and medium.upper() != "GPU":
            return 0
        ep = self._endpoints.get(endpoint_id)
        if ep is None:
            return 0
        group = group_idx or 0
        bit = 1 << group
        removed = 0
        for raw in block_hashes:
            h = engine_hash(raw)
            key = ep.engine_to_key.get(h)
            entry = ep.lru.get(key) if key is not None else None
            if entry is None or entry.groups < 0 or not entry.groups & bit:
                if h in ep.pending:
                    ep.pending[h] &= ~bit
                continue
            ep.held -= 1
            removed += 1
            extra = ep.copies.pop((h, group), 0)
            if extra:  # another copy still holds the block
                if extra > 1:
                    ep.copies[h, group] = extra - 1
                continue
            entry.groups &= ~bit
            if not entry.groups:
                del ep.lru[key]  # type: ignore[arg-type]  # key is set whenever entry is
                del ep.engine_to_key[h]
        self.counters.removed_blocks += removed
        return removed

    def apply_event(self, endpoint_id: str, event: Any) -> int:
        """Dispatch one decoded event (an object with vLLM's field names, or a dict with a `type` key)."""
        get: Callable[[str, Any], Any]
        if isinstance(event, Mapping):
            kind = str(event.get("type", ""))
            get = event.get
        else:
            kind = type(event).__name__

            def get(name: str, default: Any = None) -> Any:
                return getattr(event, name, default)

        if kind == "BlockStored":
            return self.apply_stored(
                endpoint_id,
                get("block_hashes", []),
                get("parent_block_hash", None),
                get("token_ids", []),
                int(get("block_size", 16)),
                lora_name=get("lora_name", None),
                extra_keys=get("extra_keys", None),
                medium=get("medium", None),
                group_idx=get("group_idx", None),
                kv_cache_spec_kind=get("kv_cache_spec_kind", None),
                kv_cache_spec_sliding_window=get("kv_cache_spec_sliding_window", None),
            )
        if kind == "BlockRemoved":
            return self.apply_removed(
                endpoint_id, get("block_hashes", []), get("medium", None), get("group_idx", None)
            )
        if kind == "AllBlocksCleared":
            self.clear_endpoint(endpoint_id)
            return 0
        self.counters.ignored_events += 1
        return 0

    # -- router side -----------------------------------------------------------------------------------------
    def insert(self, endpoint_id: str, keys: Sequence[BlockKey], *, ttl_s: float | None) -> None:
        """Record that `keys` were sent to `endpoint_id`: speculative for `ttl_s` seconds (None: until
        evicted, the approximate index's mode). Confirmed entries are only touched (moved to most recent)."""
        ep = self._ep(endpoint_id)
        expires = math.inf if ttl_s is None else self._clock() + ttl_s
        lru = ep.lru
        for key in keys:
            entry = lru.get(key)
            if entry is None:
                lru[key] = _Entry(None, expires)
                ep.held += 1
            else:
                if entry.expires_at != math.inf:
                    entry.expires_at = max(entry.expires_at, expires)
                lru.move_to_end(key)
        self._trim(ep)

    def match(self, endpoint_id: str, keys: Sequence[BlockKey], now: float | None = None) -> int:
        """Number of leading `keys` whose blocks the engine would take as a prefix-cache hit (expired
        speculative entries count as missing).

        Every block of the prefix must be held by every full-attention group. A sliding-window group attends
        only to its window, so, as vLLM's hybrid coordinator decides (`HybridKVCacheCoordinator.
        find_longest_cache_hit` with `SlidingWindowManager`), the hit ends where that group holds the
        cdiv(window - 1, block_size) blocks before it: the longest such length within the full groups' prefix,
        lowered until every sliding group agrees."""
        ep = self._endpoints.get(endpoint_id)
        if ep is None or not keys:
            return 0
        lru = ep.lru
        full = ep.rules.full_mask
        matched = 0
        for key in keys:
            entry = lru.get(key)
            if entry is None or entry.groups & full != full:
                break
            if entry.expires_at != math.inf:
                if now is None:
                    now = self._clock()
                if entry.expires_at < now:
                    del lru[key]
                    ep.held -= 1
                    break
            matched += 1
        if not ep.rules.sliding or not matched:
            return matched
        now = self._clock() if now is None else now
        while True:
            agreed = matched
            for bit, window_blocks in ep.rules.sliding:
                agreed = min(agreed, self._window_hit(lru, keys, agreed, bit, window_blocks, now))
            if agreed == matched:
                return matched
            matched = agreed

    @staticmethod
    def _window_hit(
        lru: Mapping[BlockKey, _Entry], keys: Sequence[BlockKey], limit: int, bit: int, need: int, now: float
    ) -> int:
        """Longest hit <= `limit` blocks for one sliding group: the right-most run of `need` held blocks ends
        it; with no such run, the held blocks from the start (all a short prompt attends to)."""
        run = 0
        for i in range(limit - 1, -1, -1):
            entry = lru.get(keys[i])
            if entry is not None and entry.groups & bit and entry.expires_at >= now:
                run += 1
                if run >= need:
                    return i + need
            else:
                run = 0
        return run

    def _trim(self, ep: _EndpointBlocks) -> None:
        lru = ep.lru
        while ep.held > ep.capacity and lru:
            _, entry = lru.popitem(last=False)
            weight = entry.weight()
            h = entry.engine_hash
            if h is not None:
                ep.engine_to_key.pop(h, None)
                if ep.copies and entry.groups > 0:
                    weight += sum(ep.copies.pop((h, g), 0) for g in range(entry.groups.bit_length()))
            ep.held -= weight
            self.counters.evicted_blocks += weight

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "blocks": self.size(),
            "endpoints": {eid: len(ep.lru) for eid, ep in self._endpoints.items()},
            "stored_blocks": c.stored_blocks,
            "removed_blocks": c.removed_blocks,
            "evicted_blocks": c.evicted_blocks,
            "cleared": c.cleared,
            "orphan_events": c.orphan_events,
            "ignored_events": c.ignored_events,
        }
