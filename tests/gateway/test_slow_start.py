"""Slow start for endpoints that join a serving pool (scale-up, rollout, replacement node) and for those that
come back: the ramp on a FakeClock, the ceiling against the pool's load, and the real gateway with each
routing preset (the real Router) in front of fake vLLM-shaped engines (no GPU here), where a new endpoint,
added to the registry as discovery adds one, takes only its ramped share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from eksinfer.gateway.config import parse_config
from eksinfer.gateway.endpoints import EndpointSpec
from eksinfer.gateway.resilience.cascade import Cascade
from eksinfer.gateway.resilience.config import OutlierConfig, ResilienceConfig
from eksinfer.gateway.resilience.layer import Resilience
from eksinfer.gateway.resilience.outlier import OutlierDetector
from eksinfer.gateway.resilience.slowstart import SlowStartRamp
from eksinfer.gateway.runtime import build_runtime
from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState
from tests.gateway.test_proxy_fakes import EngineBehaviour, FakeEngine
from tests.waiting import FakeClock, until

pytestmark = pytest.mark.timeout(60)


def ep(name: str, pool: str = "p", **fields: Any) -> EndpointState:
    return EndpointState(id=EndpointId(name), url=f"http://{name}", pool=pool, **fields)


# --- the ramp ---------------------------------------------------------------------------------------------
def test_weight_ramps_like_envoys_slow_start() -> None:
    linear = SlowStartRamp(10.0)
    assert [linear.weight(t) for t in (0.0, 0.5, 5.0, 9.0, 10.0, 60.0)] == [0.1, 0.1, 0.5, 0.9, 1.0, 1.0]
    eager = SlowStartRamp(10.0, aggression=2.0, min_weight=0.05)
    assert eager.weight(0.0) == 0.05
    assert eager.weight(2.5) == pytest.approx(0.5)  # (0.25) ^ (1/2): faster at first
    assert eager.weight(2.5) > linear.weight(2.5)
    assert not SlowStartRamp(0.0).enabled


def test_the_ceiling_is_the_weight_times_the_pools_mean_load_and_at_least_one() -> None:
    peers = [ep("a", inflight_requests=10), ep("b", inflight_requests=30)]
    new = ep("n", inflight_requests=4)
    assert not SlowStartRamp.admits(new, 0.1, peers)  # 0.1 x 20 = 2
    assert SlowStartRamp.admits(new, 0.25, peers)  # 5
    idle = [ep("a"), ep("b")]
    assert SlowStartRamp.admits(ep("n"), 0.1, idle)  # at least one, or it never warms up
    assert not SlowStartRamp.admits(ep("n", inflight_requests=1), 0.1, idle)
    assert SlowStartRamp.admits(new, 0.1, [])  # no full peer to compare with


# --- which endpoints ramp ----------------------------------------------------------------------------------
def test_only_endpoints_joining_a_serving_pool_ramp_and_from_their_first_candidacy() -> None:
    clock = FakeClock()
    det = OutlierDetector(OutlierConfig(), SlowStartRamp(10.0), clock=clock)
    a, b = ep("a", inflight_requests=8), ep("b", inflight_requests=8)
    for start in (a, b):  # the pool's starting endpoints, added before any request
        det.joined(start)
    assert not det.in_slow_start(a)
    assert det.eligible([a, b]) == [a, b]  # the pool serves from here on
    other = ep("o", pool="q")
    det.joined(other)  # a pool that never served: nothing to protect it from
    assert not det.in_slow_start(other)
    new = ep("n")
    det.joined(new)
    assert det.in_slow_start(new)
    clock.advance(30.0)  # discovery added it long before its models were known: the ramp has not begun
    assert det.eligible([a, b, new]) == [a, b, new]  # weight 0.1 of 8: one request allowed
    new.inflight_requests = 1
    assert det.eligible([a, b, new]) == [a, b]
    clock.advance(5.0)  # weight 0.5: four
    new.inflight_requests = 3
    assert det.eligible([a, b, new]) == [a, b, new]
    new.inflight_requests = 4
    assert det.eligible([a, b, new]) == [a, b]
    assert det.eligible([new]) == [new]  # the only candidate (its peers tried already): never emptied
    clock.advance(5.0)
    assert det.eligible([a, b, new]) == [a, b, new]
    assert not det.in_slow_start(new)


def test_slow_start_off_and_forgotten_endpoints() -> None:
    det = OutlierDetector(OutlierConfig(), 0.0, clock=FakeClock())
    a = ep("a")
    det.eligible([a])
    new = ep("n", inflight_requests=5)
    det.joined(new)
    assert not det.in_slow_start(new)
    det2 = OutlierDetector(OutlierConfig(), SlowStartRamp(10.0), clock=FakeClock())
    det2.eligible([a])
    det2.joined(new)
    det2.forget(new.id)  # removed before it ever served
    assert not det2.in_slow_start(new)
    assert det2.eligible([a, new]) == [a, new]


def test_the_ramp_settings_are_in_the_resilience_section() -> None:
    config = ResilienceConfig.model_validate(
        {"slow_start_s": 30, "slow_start_aggression": 2, "slow_start_min_weight": 0.2}
    )
    res = Resilience(config, Cascade({}, {}), clock=FakeClock())
    a = ep("a", inflight_requests=10)
    res.detector.eligible([a])
    new = ep("n", inflight_requests=1)
    res.detector.joined(new)
    assert res.detector.eligible([a, new]) == [a, new]  # 0.2 x 10 = 2
    new.inflight_requests = 2
    assert res.detector.eligible([a, new]) == [a]
    with pytest.raises(ValueError, match="slow_start_min_weight"):
        ResilienceConfig.model_validate({"slow_start_min_weight": 0})


# --- end to end: a new endpoint behind every preset ---------------------------------------------------------
@pytest.fixture
async def engines() -> AsyncIterator[list[FakeEngine]]:
    hold = asyncio.Event()
    started = [await FakeEngine(behaviour=EngineBehaviour(hold=hold)).start() for _ in range(3)]
    yield started
    hold.set()
    for engine in started:
        await engine.stop()


@pytest.mark.parametrize("preset", ["round-robin", "load", "kv-aware"])
async def test_a_new_endpoint_takes_its_ramped_share_whatever_the_preset(
    engines: list[FakeEngine], preset: str
) -> None:
    first, second, new = engines
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "endpoints": {"static": [{"url": e.url, "models": ["tiny"]} for e in (first, second)]},
            "routing": {"preset": preset, "tokenizer": {"mode": "approx"}},
            "scrape": {"interval_s": 0.05},
            "resilience": {"health_checks": {"enabled": False}, "stall_after_s": 0, "slow_start_s": 10},
        }
    )
    clock = FakeClock()
    runtime = build_runtime(config, resilience=Resilience(config.resilience, Cascade({}, {}), clock=clock))
    await runtime.start()
    held = 0
    sent: list[asyncio.Task[httpx.Response]] = []
    client = httpx.AsyncClient(timeout=30)

    async def send(n: int) -> None:
        nonlocal held
        for i in range(n):  # one at a time, so each decision sees the one before it in flight
            body = {"model": "tiny", "prompt": f"request {held} {i}", "max_tokens": 4}
            sent.append(
                asyncio.create_task(client.post(f"http://127.0.0.1:{runtime.port}/v1/completions", json=body))
            )
            held += 1
            await until(lambda want=held: sum(e.held for e in engines) == want, what=f"{held} requests held")

    try:
        await send(6)
        assert first.held > 0  # the starting endpoints take traffic at once
        assert second.held > 0
        runtime.registry.add(EndpointSpec(url=new.url, pool="default", models=("tiny",)))  # as discovery
        state = runtime.registry.get(EndpointId(new.url.split("://", 1)[1]))
        assert state is not None
        assert runtime.resilience.detector.in_slow_start(state)
        await send(6)
        assert new.held == 1  # weight 0.1 of ~6 in flight each: its ceiling is one request
        clock.advance(10.0)  # the window has passed: full weight
        await send(6)
        assert new.held >= 3  # its share now (round robin: a third; load-aware: the least loaded)
        assert not runtime.resilience.detector.in_slow_start(state)
    finally:
        hold = first.behaviour.hold
        assert hold is not None
        hold.set()
        answers = await asyncio.gather(*sent)
        assert [r.status_code for r in answers] == [200] * len(sent)
        await client.aclose()
        await runtime.stop()
