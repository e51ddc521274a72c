"""The stored-response tracker (LRU, TTL, tombstones) and the id sniffer, with an injected clock."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from eksinfer.gateway.response_ids import (
    SNIFF_LIMIT_BYTES,
    IdSniffer,
    PinMetrics,
    ResponseIds,
    answer_id,
    first_event_id,
)
from eksinfer.gateway.scheduling.framework import EndpointId

A, B = EndpointId("10.0.0.1:8000"), EndpointId("10.0.0.2:8000")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_least_recently_used_ids_go_first_when_full() -> None:
    ids = ResponseIds(max_entries=3, ttl_s=100, clock=Clock())
    for n in range(3):
        ids.learn(f"r{n}", A, "p")
    assert ids.lookup("r0") is not None  # r0 used: r1 is now the oldest
    ids.learn("r3", B, "q")
    assert [ids.lookup(r) is not None for r in ("r0", "r1", "r2", "r3")] == [True, False, True, True]
    assert len(ids) == 3
    assert ids.evicted == {"capacity": 1, "expired": 0}
    entry = ids.lookup("r3")
    assert entry is not None
    assert (entry.endpoint, entry.pool, entry.gone) == (B, "q", False)


def test_ids_expire_after_their_last_use() -> None:
    clock = Clock()
    ids = ResponseIds(max_entries=10, ttl_s=10, clock=clock)
    ids.learn("old", A, "p")
    ids.learn("used", A, "p")
    clock.now = 8
    assert ids.lookup("used") is not None  # refreshed at 8
    clock.now = 15
    assert ids.lookup("old") is None  # 15 s unused
    assert ids.lookup("used") is not None  # 7 s since its last use
    ids.learn("late", B, "p")
    clock.now = 26
    assert ids.expire() == 2  # "used" (last use 15) and "late" (learnt at 15): 11 s each
    assert ids.lookup("late") is None
    assert ids.evicted["expired"] == 3
    assert len(ids) == 0


def test_an_endpoint_that_leaves_leaves_tombstones() -> None:
    ids = ResponseIds(max_entries=10, ttl_s=100, clock=Clock())
    ids.learn("a1", A, "p")
    ids.learn("a2", A, "p")
    ids.learn("b1", B, "p")
    assert ids.endpoint_left(A) == 2
    assert ids.endpoint_left(A) == 0  # already gone
    a1, b1 = ids.lookup("a1"), ids.lookup("b1")
    assert a1 is not None
    assert a1.gone
    assert b1 is not None
    assert not b1.gone
    assert ids.gone_count() == 2
    ids.learn("a1", B, "p")  # the same id learnt again (another engine answered it): live again
    moved = ids.lookup("a1")
    assert moved is not None
    assert not moved.gone
    assert moved.endpoint == B
    assert ids.endpoint_left(B) == 2  # b1 and the moved a1


def test_relearning_moves_an_id_between_endpoints() -> None:
    ids = ResponseIds(max_entries=10, ttl_s=100, clock=Clock())
    ids.learn("r", A, "p")
    ids.learn("r", B, "p")
    assert len(ids) == 1
    assert ids.endpoint_left(A) == 0
    entry = ids.lookup("r")
    assert entry is not None
    assert entry.endpoint == B


def _event(kind: str, data: object) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def test_the_sniffer_reads_the_first_event_across_chunks() -> None:
    found: list[str] = []
    sniff = IdSniffer(True, found.append)
    stream = _event("response.created", {"response": {"id": "resp_1", "tools": [{"x": 1}]}, "type": "t"})
    stream += _event("response.in_progress", {"response": {"id": "resp_other"}})
    for i in range(0, len(stream), 7):
        sniff.feed(stream[i : i + 7])
    sniff.finish()
    assert found == ["resp_1"]
    assert sniff.done


def test_the_sniffer_reads_a_whole_json_answer_at_its_end() -> None:
    found: list[str] = []
    sniff = IdSniffer(False, found.append)
    body = json.dumps({"output": [{"id": "msg_1"}], "id": "resp_2", "object": "response"}).encode()
    sniff.feed(body[:10])
    assert found == []  # not complete yet
    sniff.feed(body[10:])
    sniff.finish()
    assert found == ["resp_2"]


def test_the_sniffer_gives_up_on_what_is_not_a_response() -> None:
    found: list[str] = []
    for sse, body in (
        (False, b'{"error": {"message": "x"}}'),
        (False, b"not json"),
        (True, b"data: [DONE]\n\n"),
        (True, _event("error", {"error": "x"})),
    ):
        sniff = IdSniffer(sse, found.append)
        sniff.feed(body)
        sniff.finish()
    big = IdSniffer(True, found.append)
    big.feed(b"event: response.created\ndata: " + b" " * SNIFF_LIMIT_BYTES)
    assert big.done  # over the limit without an event's end: given up, the buffer freed
    assert found == []
    assert answer_id(b'{"id": 5}') is None
    assert first_event_id(b"event: x\n") is None


def test_metrics_show_size_evictions_and_lookups() -> None:
    registry = CollectorRegistry()
    ids = ResponseIds(max_entries=1, ttl_s=100, clock=Clock())
    metrics = PinMetrics(ids, registry)
    ids.learn("a", A, "p")
    ids.learn("b", A, "p")
    metrics.lookups.labels("hit").inc()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    assert values[("eksinfer_gateway_response_ids", ())] == 1
    assert values[("eksinfer_gateway_response_id_evictions_total", (("reason", "capacity"),))] == 1
    assert values[("eksinfer_gateway_response_id_lookups_total", (("result", "hit"),))] == 1
    assert values[("eksinfer_gateway_response_id_lookups_total", (("result", "gone"),))] == 0
