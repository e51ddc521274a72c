"""Which engine holds which stored Responses-API response: learnt from the answers the gateway relays.

vLLM 0.32 keeps stored responses (`store: true`, VLLM_ENABLE_RESPONSES_API_STORE) in the memory of the
serving process that answered, so a follow-up with `previous_response_id`, `GET /v1/responses/{id}` and
`POST /v1/responses/{id}/cancel` work only on that engine. The gateway reads each answer's id as it relays
it (`IdSniffer`: the `id` of a JSON answer, the `response.id` of a stream's first event, response.created)
and remembers id -> endpoint here.

Bounded: at most `max_entries` ids (least recently used dropped first) and each for `ttl_s` after its last
use. Forgetting is safe: an id the gateway does not know is looked for on every engine (gateway/apis.py),
so eviction costs a fan-out of GETs, never a wrong answer. When an endpoint leaves the pool its ids turn
into tombstones (they hold no endpoint to send to, only the fact that the stored context is lost), so the
client is told that instead of a bare "not found"; tombstones age out like the others.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from eksinfer.gateway.scheduling.framework import EndpointId

__all__ = ["Entry", "IdSniffer", "ResponseIds", "answer_id", "first_event_id"]

DEFAULT_MAX_ENTRIES = 100_000  # ~350 bytes each with its id string (measured): ~35 MB at most
DEFAULT_TTL_S = 86_400.0
SNIFF_LIMIT_BYTES = 1 << 20  # the first event (or a JSON answer) is read up to this size, then given up on
_PREFIX = "eksinfer_gateway_"


@dataclass(slots=True)
class Entry:
    """Where a response is stored; `gone`: that endpoint left the pool (the stored context is lost)."""

    endpoint: EndpointId
    pool: str
    used: float
    gone: bool = False


class ResponseIds:
    """response id -> endpoint, LRU- and TTL-bounded; one per gateway process."""

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries, self.ttl_s, self._clock = max_entries, ttl_s, clock
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._by_endpoint: dict[EndpointId, set[str]] = {}
        self.evicted = {"capacity": 0, "expired": 0}

    def __len__(self) -> int:
        return len(self._entries)

    def learn(self, response_id: str, endpoint: EndpointId, pool: str) -> None:
        """Records (or moves) `response_id` to `endpoint`; the oldest ids go when the map is full."""
        self._drop(response_id)
        self._entries[response_id] = Entry(endpoint, pool, self._clock())
        self._by_endpoint.setdefault(endpoint, set()).add(response_id)
        while len(self._entries) > self.max_entries:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evicted["capacity"] += 1

    def lookup(self, response_id: str) -> Entry | None:
        """The entry of `response_id` (its use refreshes it), or None when unknown or expired."""
        entry = self._entries.get(response_id)
        if entry is None:
            return None
        now = self._clock()
        if now - entry.used > self.ttl_s:
            self._drop(response_id)
            self.evicted["expired"] += 1
            return None
        entry.used = now
        self._entries.move_to_end(response_id)
        return entry

    def endpoint_left(self, endpoint: EndpointId) -> int:
        """The endpoint left the pool: its ids become tombstones. Returns how many."""
        ids = self._by_endpoint.pop(endpoint, set())
        for response_id in ids:
            self._entries[response_id].gone = True
        return len(ids)

    def expire(self) -> int:
        """Drops every id unused for `ttl_s` (oldest first, so it stops at the first fresh one)."""
        now, dropped = self._clock(), 0
        while self._entries:
            oldest, entry = next(iter(self._entries.items()))
            if now - entry.used <= self.ttl_s:
                break
            self._drop(oldest)
            dropped += 1
        self.evicted["expired"] += dropped
        return dropped

    def gone_count(self) -> int:
        return sum(1 for e in self._entries.values() if e.gone)

    def _drop(self, response_id: str) -> None:
        entry = self._entries.pop(response_id, None)
        if entry is not None and not entry.gone:
            ids = self._by_endpoint.get(entry.endpoint)
            if ids is not None:
                ids.discard(response_id)
                if not ids:
                    del self._by_endpoint[entry.endpoint]


class _Id(msgspec.Struct):
    id: str


class _Created(msgspec.Struct):
    response: _Id


_decode_id = msgspec.json.Decoder(_Id).decode
_decode_created = msgspec.json.Decoder(_Created).decode


def answer_id(body: bytes) -> str | None:
    """The `id` of a whole JSON Responses answer (a stored or queued response), or None."""
    try:
        return _decode_id(body).id
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None


def first_event_id(event: bytes) -> str | None:
    """The response id in one SSE event (`event: response.created` then `data: {"response": {"id": ...}}`)."""
    for line in event.splitlines():
        if line.startswith(b"data:"):
            try:
                return _decode_created(line[5:]).response.id
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                return None
    return None


class IdSniffer:
    """Reads a relayed Responses answer's id without holding the answer: the first SSE event of a stream,
    or a JSON body (up to `SNIFF_LIMIT_BYTES`; `finish()` at its end). Calls `on_id` once."""

    def __init__(self, sse: bool, on_id: Callable[[str], None]) -> None:
        self._sse, self._on_id = sse, on_id
        self._buf = bytearray()
        self.done = False

    def feed(self, chunk: bytes) -> None:
        if self.done:
            return
        self._buf += chunk
        if len(self._buf) > SNIFF_LIMIT_BYTES:
            self._stop(None)
        elif self._sse:
            end = self._buf.find(b"\n\n")
            if end >= 0:
                self._stop(first_event_id(bytes(self._buf[:end])))

    def finish(self) -> None:
        """The body ended: a JSON answer is complete now."""
        if not self.done:
            self._stop(None if self._sse else answer_id(bytes(self._buf)))

    def _stop(self, found: str | None) -> None:
        self.done = True
        self._buf = bytearray()
        if found:
            self._on_id(found)


LOOKUP_RESULTS = ("hit", "probe_hit", "not_found", "gone", "unavailable")


class PinMetrics:
    """What the pinning did: ids held, evictions, and each lookup's result."""

    def __init__(self, ids: ResponseIds, registry: CollectorRegistry) -> None:
        self.lookups = Counter(
            _PREFIX + "response_id_lookups",
            "Lookups of a stored response's engine (previous_response_id, GET, cancel), by result: hit (the "
            "gateway knew it), probe_hit (found by asking every engine), not_found, gone (its engine left "
            "the pool), unavailable (an engine that might hold it did not answer).",
            ["result"],
            registry=registry,
        )
        for result in LOOKUP_RESULTS:
            self.lookups.labels(result)
        registry.register(_IdsCollector(ids))


class _IdsCollector(Collector):
    def __init__(self, ids: ResponseIds) -> None:
        self._ids = ids

    def collect(self) -> Iterable[Metric]:
        held = GaugeMetricFamily(
            _PREFIX + "response_ids",
            "Stored-response ids the gateway maps to an engine (tombstones of departed engines included).",
        )
        held.add_metric([], len(self._ids))
        yield held
        evicted = CounterMetricFamily(
            _PREFIX + "response_id_evictions",
            "Ids forgotten, by reason: capacity (the least recently used, over max entries) or expired.",
            labels=["reason"],
        )
        for reason, count in self._ids.evicted.items():
            evicted.add_metric([reason], count)
        yield evicted
