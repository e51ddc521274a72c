"""The router's own statistics (`Router.stats()`) as Prometheus families, typed by what each number is.

`stats()` also feeds logs, so it mixes cumulative counts, levels and labels. Exporting every number as a gauge
(as this module's predecessor did) made `rate()` and `increase()` unusable on counts that only grow and hid
counter resets on restart. Here each key is declared once: a counter (`_total`, cumulative since the gateway
started), a gauge (a level: index size, lag), or deliberately not exported (strings, and statistics that the
gateway measures better itself: routing time is the `scheduling_duration_seconds` histogram, decisions the
`decisions_total` counter). Keys not declared here are not exported: a new statistic needs a decision here,
which `tests/gateway/test_metrics.py` enforces against the real router.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

Kind = Literal["counter", "gauge"]
Family = CounterMetricFamily | GaugeMetricFamily
PREFIX = "eksinfer_gateway_router_"

# Top-level numbers: key -> (metric name without prefix or `_total`, kind, help).
SCALARS: dict[str, tuple[str, Kind, str]] = {
    "index_blocks": ("index_blocks", "gauge", "KV blocks in the precise prefix index, all endpoints."),
    "approx_index_blocks": (
        "approx_index_blocks",
        "gauge",
        "Block keys in the approximate (character-based) prefix index.",
    ),
    "predicted_hit_ratio": (
        "predicted_hit_ratio",
        "gauge",
        "Predicted cached share of routed prompt tokens since start; for a windowed ratio use "
        "eksinfer_gateway_prompt_tokens_predicted_cached_total / eksinfer_gateway_prompt_tokens_total.",
    ),
    "event_lag_s_max": (
        "kv_event_lag_max_seconds",
        "gauge",
        "Largest current KV-event lag over all endpoints (engine timestamp to index update).",
    ),
    "tokenize_failures": (
        "tokenize_failures",
        "counter",
        "Requests the tokenizer could not encode (routed approximately instead).",
    ),
}

# The index's counters, under stats()["index"]: key -> (name, kind, help).
INDEX: dict[str, tuple[str, Kind, str]] = {
    "stored_blocks": ("index_stored_blocks", "counter", "BlockStored blocks applied to the index."),
    "removed_blocks": ("index_removed_blocks", "counter", "BlockRemoved blocks applied to the index."),
    "evicted_blocks": ("index_evicted_blocks", "counter", "Blocks the index dropped to stay in its bounds."),
    "cleared": ("index_clears", "counter", "AllBlocksCleared events (and resets after lost events)."),
    "orphan_events": ("index_orphan_events", "counter", "Events for blocks whose parent was unknown."),
    "ignored_events": ("index_ignored_events", "counter", "Events the index ignored (unknown kind, medium)."),
}
INDEX_SKIPPED = frozenset({"blocks"})  # the same number as the top-level index_blocks
INDEX_PER_ENDPOINT = ("index_endpoint_blocks", "KV blocks in the precise index, per endpoint.")

# Per-endpoint KV-event subscriber statistics, under stats()["subscribers"][endpoint].
SUBSCRIBER: dict[str, tuple[str, Kind, str]] = {
    "batches": ("subscribers_batches", "counter", "KV-event batches received."),
    "events": ("subscribers_events", "counter", "KV events received."),
    "gaps": ("subscribers_gaps", "counter", "Sequence gaps seen (batches missed on the live socket)."),
    "replays": ("subscribers_replays", "counter", "Replay requests sent to fill a gap."),
    "replayed_batches": ("subscribers_replayed_batches", "counter", "Batches received through replay."),
    "lost_batches": ("subscribers_lost_batches", "counter", "Batches neither received nor replayed."),
    "duplicates": ("subscribers_duplicates", "counter", "Batches received twice (dropped)."),
    "probes": ("subscribers_probes", "counter", "Replay probes sent while the socket was silent."),
    "restarts": ("subscribers_restarts", "counter", "Publisher restarts detected (sequence went back)."),
    "reconnects": ("subscribers_reconnects", "counter", "Reconnections of the SUB socket."),
    "decode_errors": ("subscribers_decode_errors", "counter", "Messages that could not be decoded."),
    "last_seq": ("subscribers_last_seq", "gauge", "Sequence number of the last batch received."),
    "lag_s": ("subscribers_lag_seconds", "gauge", "KV-event lag of the last batch (engine time to index)."),
    "lag_s_max": ("subscribers_lag_max_seconds", "gauge", "Largest KV-event lag seen."),
}
SUBSCRIBER_SKIPPED = frozenset({"last_message_at"})  # a monotonic timestamp, meaningless off the process

SKIPPED = frozenset({"preset", "tokenizer", "decisions", "route_ms_mean", "route_ms_max"})


def _family(name: str, kind: Kind, help_text: str, labels: list[str] | None = None) -> Family:
    full = PREFIX + name
    if kind == "counter":
        return CounterMetricFamily(full, help_text, labels=labels)
    return GaugeMetricFamily(full, help_text, labels=labels)


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _unlabelled(table: Mapping[str, tuple[str, Kind, str]], source: Mapping[str, Any]) -> Iterable[Family]:
    """One family per statistic of `table` that `source` holds as a number."""
    for key, (name, kind, help_text) in table.items():
        value = _number(source.get(key))
        if value is not None:
            family = _family(name, kind, help_text)
            family.add_metric([], value)
            yield family


def router_families(stats: Mapping[str, Any]) -> Iterable[Family]:
    """The declared statistics present in `stats` (routers without an index simply export less)."""
    yield from _unlabelled(SCALARS, stats)
    index = stats.get("index")
    if isinstance(index, Mapping):
        yield from _unlabelled(INDEX, index)
        per_endpoint = index.get("endpoints")
        if isinstance(per_endpoint, Mapping) and per_endpoint:
            name, help_text = INDEX_PER_ENDPOINT
            family = _family(name, "gauge", help_text, ["endpoint"])
            for endpoint, blocks in per_endpoint.items():
                if (value := _number(blocks)) is not None:
                    family.add_metric([str(endpoint)], value)
            yield family
    subscribers = stats.get("subscribers")
    if isinstance(subscribers, Mapping) and subscribers:
        yield from _subscriber_families(subscribers)


def _subscriber_families(subscribers: Mapping[str, Any]) -> Iterable[Family]:
    families: dict[str, Family] = {}
    for endpoint, fields in subscribers.items():
        if not isinstance(fields, Mapping):
            continue
        for key, (name, kind, help_text) in SUBSCRIBER.items():
            value = _number(fields.get(key))
            if value is None:
                continue
            family = families.get(name)
            if family is None:
                family = families[name] = _family(name, kind, help_text, ["endpoint"])
            family.add_metric([str(endpoint)], value)
    yield from families.values()
