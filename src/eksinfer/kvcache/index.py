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


@dataclass(slots=True)
class _Entry:
    engine_hash: int | None
    expires_at: float  # math.inf once the engine confirmed the block


class _EndpointBlocks:
    __slots__ = ("block_size", "capacity", "engine_to_key", "lru")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lru: OrderedDict[BlockKey, _Entry] = OrderedDict()
        self.engine_to_key: dict[int, BlockKey] = {}
        self.block_size: int | None = None


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
    ) -> int:
        """Index the blocks of one `BlockStored`; returns how many keys it added or confirmed."""
        if medium is not None and medium.upper() != "GPU":
            self.counters.ignored_events += 1  # CPU/disk tiers are not scored (see docs/routing.md)
            return 0
        ep = self._ep(endpoint_id)
        ep.block_size = block_size
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
        keys = chain_keys(token_ids, block_size, parent=parent, extra_keys=extra_keys)
        for key, raw in zip(keys, block_hashes, strict=False):
            h = engine_hash(raw)
            entry = ep.lru.get(key)
            if entry is None:
                ep.lru[key] = _Entry(h, math.inf)
            else:
                if entry.engine_hash is not None and entry.engine_hash != h:
                    ep.engine_to_key.pop(entry.engine_hash, None)
                entry.engine_hash, entry.expires_at = h, math.inf
                ep.lru.move_to_end(key)
            ep.engine_to_key[h] = key
        self.counters.stored_blocks += len(keys)
        self._trim(ep)
        return len(keys)

    def apply_removed(
        self, endpoint_id: str, block_hashes: Iterable[int | bytes], medium: str | None = None
    ) -> int:
        """Drop the blocks of one `BlockRemoved` (the engine evicted them); unknown hashes are ignored."""
        if medium is not None and medium.upper() != "GPU":
            return 0
        ep = self._endpoints.get(endpoint_id)
        if ep is None:
            return 0
        removed = 0
        for raw in block_hashes:
            key = ep.engine_to_key.pop(engine_hash(raw), None)
            if key is not None and ep.lru.pop(key, None) is not None:
                removed += 1
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
            )
        if kind == "BlockRemoved":
            return self.apply_removed(endpoint_id, get("block_hashes", []), get("medium", None))
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
            else:
                if entry.expires_at != math.inf:
                    entry.expires_at = max(entry.expires_at, expires)
                lru.move_to_end(key)
        self._trim(ep)

    def match(self, endpoint_id: str, keys: Sequence[BlockKey], now: float | None = None) -> int:
        """Number of leading `keys` the endpoint holds (expired speculative entries count as missing)."""
        ep = self._endpoints.get(endpoint_id)
        if ep is None or not keys:
            return 0
        lru = ep.lru
        matched = 0
        for key in keys:
            entry = lru.get(key)
            if entry is None:
                break
            if entry.expires_at != math.inf:
                if now is None:
                    now = self._clock()
                if entry.expires_at < now:
                    del lru[key]
                    break
            matched += 1
        return matched

    def _trim(self, ep: _EndpointBlocks) -> None:
        lru = ep.lru
        while len(lru) > ep.capacity:
            _, entry = lru.popitem(last=False)
            if entry.engine_hash is not None:
                ep.engine_to_key.pop(entry.engine_hash, None)
            self.counters.evicted_blocks += 1

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
