"""The status board's numbers on injected values: nearest-rank percentiles, the rolling window (a fake clock),
the bounded ring of recent decisions, per-endpoint grouping by pool."""

from __future__ import annotations

import pytest

from eksinfer.gateway.accesslog import RequestRecord
from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState
from eksinfer.gateway.status.board import StatusBoard, nearest_rank
from tests.waiting import FakeClock


def record(n: int, endpoint: str = "a:1", *, ttft_s: float | None = 0.1, status: int = 200) -> RequestRecord:
    rec = RequestRecord(f"r{n}", "/v1/completions", 0.0, 1_700_000_000.0 + n, model="m", endpoint=endpoint)
    rec.pool, rec.status, rec.ttft_s = "default", status, ttft_s
    rec.prompt_tokens, rec.cached_tokens, rec.reason = 100, 25, "prefix"
    return rec


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([], 50, None),
        ([7.0], 50, 7.0),
        ([7.0], 90, 7.0),
        ([float(i) for i in range(1, 11)], 50, 5.0),  # rank ceil(0.5 * 10) = 5
        ([float(i) for i in range(1, 11)], 90, 9.0),  # rank 9
        ([float(i) for i in range(1, 12)], 90, 10.0),  # rank ceil(9.9) = 10
        ([float(i) for i in range(1, 101)], 99, 99.0),
        ([1.0, 2.0], 100, 2.0),
    ],
)
def test_nearest_rank(values: list[float], p: float, expected: float | None) -> None:
    assert nearest_rank(values, p) == expected


def test_percentiles_and_rates_per_endpoint_and_gateway() -> None:
    eps = [
        EndpointState(id=EndpointId("a:1"), url="http://a:1", pool="eks", kv_usage=0.5, inflight_requests=2),
        EndpointState(id=EndpointId("b:1"), url="http://b:1", pool="onprem", healthy=False),
    ]
    board = StatusBoard(lambda: eps, gateway_inflight=lambda: 3, clock=FakeClock())
    for i in range(1, 11):  # a:1 gets TTFTs 0.01 .. 0.10
        board.record(record(i, "a:1", ttft_s=i / 100))
    board.record(record(11, "b:1", ttft_s=None, status=502))
    snap = board.snapshot()
    gw = snap["gateway"]
    assert (gw["requests_total"], gw["errors_total"], gw["requests"], gw["errors"]) == (11, 1, 11, 1)
    assert gw["inflight"] == 3
    assert gw["ttft_p50_s"] == pytest.approx(0.05)
    assert gw["ttft_p90_s"] == pytest.approx(0.09)
    assert gw["predicted_hit_rate"] == pytest.approx(0.25)
    assert [p["name"] for p in snap["pools"]] == ["eks", "onprem"]
    a = snap["pools"][0]["endpoints"][0]
    assert (a["id"], a["healthy"], a["inflight"], a["kv_usage"], a["requests"]) == ("a:1", True, 2, 0.5, 10)
    assert (a["ttft_p50_s"], a["ttft_p90_s"]) == (pytest.approx(0.05), pytest.approx(0.09))
    b = snap["pools"][1]["endpoints"][0]
    assert (b["healthy"], b["requests"], b["errors"], b["ttft_p50_s"]) == (False, 1, 1, None)


def test_window_forgets_old_requests_but_totals_keep_counting() -> None:
    clock = FakeClock()
    board = StatusBoard(lambda: [], window_s=60.0, clock=clock)
    board.record(record(1, ttft_s=5.0))
    clock.advance(30.0)
    board.record(record(2, ttft_s=0.1))
    assert board.snapshot()["gateway"]["ttft_p90_s"] == 5.0
    clock.advance(31.0)  # the first request is now 61 s old
    gw = board.snapshot()["gateway"]
    assert (gw["requests"], gw["requests_total"], gw["ttft_p90_s"]) == (1, 2, 0.1)
    clock.advance(30.0)
    gw = board.snapshot()["gateway"]
    assert (gw["requests"], gw["ttft_p50_s"], gw["predicted_hit_rate"]) == (0, None, None)


def test_window_and_ring_are_bounded() -> None:
    board = StatusBoard(lambda: [], max_samples=8, recent=3, clock=FakeClock())
    for i in range(20):
        board.record(record(i, ttft_s=float(i)))
    snap = board.snapshot()
    assert snap["gateway"]["requests"] == 8  # only the newest 8 samples: TTFTs 12..19
    assert snap["gateway"]["ttft_p50_s"] == 15.0
    assert [d["request_id"] for d in snap["recent"]] == ["r19", "r18", "r17"]
    assert snap["recent"][0]["reason"] == "prefix"
    assert "prompt" not in snap["recent"][0]
