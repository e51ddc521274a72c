"""Open-loop queue model: exact against M/M/1 and M/M/c, consistent with the closed-loop model, and the
knee and saturation it reports."""

from __future__ import annotations

import math

import pytest

from eksinfer.catalog import get_gpu, get_model
from eksinfer.perf import build_engine_perf, predict_aggregated
from eksinfer.perf.queueing import ServiceCurve, knee_requests_per_s, max_rate, open_loop, service_curve


def test_one_server_is_m_m_1() -> None:
    curve = ServiceCurve(batch_limit=1, rates=(10.0,), tpots=(0.01,), output_tokens=1)
    for rho in (0.1, 0.5, 0.9):
        p = open_loop(curve, 10.0 * rho)
        assert p.mean_in_system == pytest.approx(rho / (1 - rho), rel=1e-9)
        assert p.e2e_s == pytest.approx(1 / (10.0 - 10.0 * rho), rel=1e-9)  # 1 / (mu - lambda)
    assert open_loop(curve, 10.0).saturated
    assert math.isinf(open_loop(curve, 12.0).ttft_s)


def test_c_servers_are_m_m_c_with_erlang_c() -> None:
    c, mu, lam = 4, 2.0, 6.0  # per-server rate 2/s, load 0.75
    curve = ServiceCurve(
        batch_limit=c, rates=tuple(k * mu for k in range(1, c + 1)), tpots=(0.01,) * c, output_tokens=1
    )
    a, rho = lam / mu, lam / (c * mu)
    top = a**c / math.factorial(c) / (1 - rho)
    erlang_c = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    queue = erlang_c * rho / (1 - rho)
    p = open_loop(curve, lam)
    assert p.mean_in_system == pytest.approx(queue + a, rel=1e-9)
    assert p.mean_running == pytest.approx(a, rel=1e-9)


def _curve(max_batch: int | None = None) -> ServiceCurve:
    perf = build_engine_perf(
        get_model("llama-3.3-70b"),
        get_gpu("H100"),
        tensor_parallel_size=4,
        precision="fp8",
        max_model_len=8192,
    )
    return service_curve(perf, input_tokens=1024, output_tokens=256, max_batch=max_batch)


def test_light_load_matches_one_request_in_flight_and_latency_grows_to_saturation() -> None:
    curve = _curve(max_batch=32)
    perf = build_engine_perf(
        get_model("llama-3.3-70b"),
        get_gpu("H100"),
        tensor_parallel_size=4,
        precision="fp8",
        max_model_len=8192,
    )
    alone = predict_aggregated(perf, input_tokens=1024, output_tokens=256, concurrency=1)
    cap = curve.capacity_requests_per_s
    light = open_loop(curve, cap * 1e-3)
    assert light.ttft_s == pytest.approx(alone.ttft_s, rel=0.02)
    assert light.tpot_s == pytest.approx(alone.tpot_s, rel=0.02)
    ttfts = [open_loop(curve, cap * f).ttft_s for f in (0.2, 0.5, 0.8, 0.9, 0.95, 0.99)]
    assert ttfts == sorted(ttfts)
    assert ttfts[-1] > 10 * light.ttft_s  # the queue, not the engine, sets TTFT near capacity
    assert open_loop(curve, cap).saturated
    for f in (0.5, 0.9):
        p = open_loop(curve, cap * f)
        assert p.e2e_s == pytest.approx(p.mean_in_system / p.requests_per_s)  # Little's law


def test_knee_doubles_latency_below_saturation() -> None:
    curve = _curve()
    knee = knee_requests_per_s(curve)
    light = open_loop(curve, curve.capacity_requests_per_s * 1e-4).e2e_s
    assert 0 < knee < curve.capacity_requests_per_s
    assert open_loop(curve, knee).e2e_s == pytest.approx(2 * light, rel=1e-3)
    assert max_rate(curve, lambda p: p.e2e_s < 0) == 0.0  # nothing meets an impossible target


def test_erlang_c_wait_matches_m_m_1_and_m_m_2() -> None:
    from eksinfer.perf.queueing import erlang_c_wait_s

    mu, lam = 5.0, 4.0
    assert erlang_c_wait_s(1, mu, lam) == pytest.approx((lam / mu) / (mu - lam), rel=1e-12)
    rho = lam / (2 * mu)
    p_wait = 2 * rho**2 / (1 + rho)  # M/M/2
    assert erlang_c_wait_s(2, mu, lam) == pytest.approx(p_wait / (2 * mu - lam), rel=1e-12)
    assert math.isinf(erlang_c_wait_s(2, mu, 10.0))
    assert erlang_c_wait_s(3, mu, 0.0) == 0.0


def test_queue_wait_is_the_time_not_running() -> None:
    curve = _curve(max_batch=16)
    p = open_loop(curve, curve.capacity_requests_per_s * 0.9)
    assert p.queue_wait_s == pytest.approx((p.mean_in_system - p.mean_running) / p.requests_per_s)
    assert p.queue_wait_s > 0
    assert math.isinf(open_loop(curve, curve.capacity_requests_per_s).queue_wait_s)
