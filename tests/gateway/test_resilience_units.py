"""The resilience layer's pieces on their own, on a FakeClock and seeded random generators: error classes,
backoff, retry budget, circuit breaker transitions, outlier ejection and readmission, slow start, shedding,
the stream continuation helpers and the config sections."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from eksinfer.errors import ConfigError
from eksinfer.gateway.config import parse_config
from eksinfer.gateway.resilience.breaker import BreakerState, CircuitBreaker
from eksinfer.gateway.resilience.cascade import TIER_MEMORY_S, Cascade, Tier, request_tokens
from eksinfer.gateway.resilience.config import BreakerConfig, BudgetConfig, OutlierConfig, RetryConfig
from eksinfer.gateway.resilience.errors import ErrorClass, SkipReason, classify_bedrock, classify_status
from eksinfer.gateway.resilience.outlier import OutlierDetector
from eksinfer.gateway.resilience.policy import Backoff, RetryBudget
from eksinfer.gateway.resilience.slowstart import SlowStartRamp
from eksinfer.gateway.resilience.stall import PREFILL_FLOOR_TOKENS_PER_S, StallWatch, Watched, grace_s
from eksinfer.gateway.resilience.stream import (
    ContinuationFilter,
    SentText,
    continuation_body,
    is_opening_only,
)
from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState
from tests.waiting import FakeClock


def ep(name: str, pool: str = "p", **fields: Any) -> EndpointState:
    return EndpointState(id=EndpointId(name), url=f"http://{name}", pool=pool, **fields)


# --- error classes --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, None),
        (400, ErrorClass.TERMINAL),
        (401, ErrorClass.TERMINAL),
        (403, ErrorClass.TERMINAL),
        (404, ErrorClass.TERMINAL),
        (408, ErrorClass.RETRYABLE),
        (429, ErrorClass.RETRYABLE),
        (500, ErrorClass.RETRYABLE),
        (502, ErrorClass.RETRYABLE),
        (503, ErrorClass.RETRYABLE),
        (504, ErrorClass.RETRYABLE),
        (501, ErrorClass.FALLBACK),
    ],
)
def test_http_status_classes(status: int, expected: ErrorClass | None) -> None:
    assert classify_status(status) is expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("ThrottlingException", ErrorClass.RETRYABLE),
        ("ServiceUnavailableException", ErrorClass.RETRYABLE),
        ("ModelNotReadyException", ErrorClass.RETRYABLE),
        ("ModelTimeoutException", ErrorClass.RETRYABLE),
        ("InternalServerException", ErrorClass.FALLBACK),
        ("ValidationException", ErrorClass.TERMINAL),
        ("AccessDeniedException", ErrorClass.TERMINAL),
    ],
)
def test_bedrock_code_classes(code: str, expected: ErrorClass) -> None:
    assert classify_bedrock(code) is expected


# --- backoff and budget ---------------------------------------------------------------------------------
def test_backoff_doubles_to_its_cap_within_the_jitter_band() -> None:
    exact = Backoff(RetryConfig(backoff_base_s=0.1, backoff_max_s=0.5, jitter=0.0))
    assert [exact.delay_s(n) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    jittered = Backoff(RetryConfig(backoff_base_s=0.1, backoff_max_s=0.5, jitter=0.2), random.Random(7))
    waits = [jittered.delay_s(2) for _ in range(200)]
    assert all(0.16 <= w <= 0.24 for w in waits)
    assert len(set(waits)) > 100  # really random: requests failing together do not retry together
    again = Backoff(RetryConfig(backoff_base_s=0.1, backoff_max_s=0.5, jitter=0.2), random.Random(7))
    assert [again.delay_s(2) for _ in range(200)] == waits  # the injected generator decides


def test_retry_budget_is_a_share_of_active_requests_with_a_minimum() -> None:
    budget = RetryBudget(BudgetConfig(percent=20, min_retries=2))
    budget.active_requests = 5  # 20 % of 5 is 1: the minimum (2) rules
    assert [budget.try_acquire() for _ in range(3)] == [True, True, False]
    assert budget.denied_total == 1
    budget.release()
    assert budget.try_acquire()
    budget.active_requests = 50  # 20 % of 50: 10 retries in flight
    assert sum(budget.try_acquire() for _ in range(20)) == 8  # 2 already in flight
    assert budget.active_retries == 10
    assert budget.denied_total == 13


# --- circuit breaker ------------------------------------------------------------------------------------
def test_breaker_opens_half_opens_with_one_trial_and_closes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("eks", BreakerConfig(min_failures=3, open_s=5), clock)
    for _ in range(4):
        breaker.record_success()
    for name in ("a", "b"):
        assert breaker.allow()
        breaker.record_failure(name, pool_size=2)
    assert breaker.state is BreakerState.CLOSED  # two failures: under min_failures
    breaker.record_failure("a", pool_size=2)
    assert breaker.state is BreakerState.CLOSED  # three, but three of seven attempts
    breaker.record_failure("b", pool_size=2)
    assert breaker.state is BreakerState.OPEN  # four of eight, from both endpoints
    assert not breaker.allow()
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.2)
    assert breaker.allow()  # the trial
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # only one trial at a time
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failures == 0  # closing starts a fresh window
    assert breaker.allow()
    assert breaker.allow()
    assert breaker.opens_total == 1


def test_breaker_judges_a_failure_share_so_late_successes_do_not_open_a_healthy_pool() -> None:
    """Successes are booked when a stream ends, failures at once: five quick failures from a bad engine (and
    one from a second) between slow successes of three healthy engines must not open the pool, as a streak
    count did."""
    clock = FakeClock()
    breaker = CircuitBreaker("eks", BreakerConfig(min_failures=5, open_s=5), clock)
    for _ in range(8):
        breaker.record_success()
        clock.advance(0.5)
    for name in ("bad", "bad", "other", "bad", "bad", "bad"):
        breaker.record_failure(name, pool_size=4)
    assert breaker.state is BreakerState.CLOSED  # 6 of 14 attempts failed: under half
    breaker.record_failure("bad", pool_size=4)
    assert breaker.state is BreakerState.CLOSED  # 7 of 15
    breaker.record_failure("bad", pool_size=4)
    assert breaker.state is BreakerState.OPEN  # 8 of 16, from two of four endpoints


def test_breaker_forgets_outcomes_older_than_its_window() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("eks", BreakerConfig(min_failures=3, window_s=10, open_s=5), clock)
    breaker.record_failure("a", pool_size=2)
    breaker.record_failure("b", pool_size=2)
    assert breaker.failures == 2
    clock.advance(10.1)
    assert breaker.failures == 0
    breaker.record_failure("a", pool_size=2)
    breaker.record_failure("b", pool_size=2)
    assert breaker.state is BreakerState.CLOSED  # two in this window, the older two forgotten
    breaker.record_failure("a", pool_size=2)
    assert breaker.state is BreakerState.OPEN


def test_breaker_try_now_moves_the_trial_forward_only_when_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("eks", BreakerConfig(min_failures=1, open_s=60), clock)
    breaker.try_now()
    assert breaker.state is BreakerState.CLOSED  # nothing to move forward
    breaker.record_failure("a", pool_size=1)
    assert not breaker.allow()
    breaker.try_now()
    assert breaker.allow()  # the trial, 60 s early
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.try_now()
    assert not breaker.allow()  # still one trial at a time


def test_breaker_trial_is_judged_at_its_first_byte_not_at_the_end_of_its_stream() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("eks", BreakerConfig(min_failures=2, open_s=5), clock)
    breaker.answered()
    assert breaker.state is BreakerState.CLOSED  # nothing to judge
    breaker.record_failure("a", 2)
    breaker.record_failure("b", 2)
    breaker.answered()  # a request from before the opening: the trial decides
    assert breaker.state is BreakerState.OPEN
    clock.advance(5)
    assert breaker.allow()  # the trial
    assert not breaker.allow()
    breaker.answered()  # its first byte: the pool answers again
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()  # while the trial still streams
    assert breaker.allow()
    breaker.record_success()  # the trial's stream ends
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failures == 0
    assert breaker.opens_total == 1


def test_breaker_reads_its_old_config_name() -> None:
    assert BreakerConfig.model_validate({"consecutive_failures": 7}).min_failures == 7


def test_breaker_trial_failure_reopens_and_an_abandoned_trial_is_handed_on() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("eks", BreakerConfig(min_failures=2, open_s=5), clock)
    breaker.record_failure("a", 2)
    breaker.record_failure("b", 2)
    clock.advance(5)
    assert breaker.allow()
    breaker.abandon_trial()  # the trial found no endpoint: the next request is the trial
    assert breaker.allow()
    breaker.record_failure("a", 2)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.opens_total == 2


def test_one_failing_endpoint_does_not_open_a_pool_of_several() -> None:
    breaker = CircuitBreaker("eks", BreakerConfig(min_failures=3, open_s=5), FakeClock())
    for _ in range(10):
        breaker.record_failure("a", pool_size=4)
    assert breaker.state is BreakerState.CLOSED  # the outlier detector's business
    single = CircuitBreaker("solo", BreakerConfig(min_failures=3, open_s=5), FakeClock())
    for _ in range(3):
        single.record_failure("a", pool_size=1)
    assert single.state is BreakerState.OPEN


# --- outlier detection ----------------------------------------------------------------------------------
class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_ejection_grows_and_ends_only_by_time() -> None:
    clock = FakeClock()
    det = OutlierDetector(OutlierConfig(consecutive_failures=3, base_ejection_s=10), 0.0, clock=clock)
    a, b = ep("a"), ep("b")
    pool = [a, b]
    assert [det.record_failure(a, pool) for _ in range(3)] == [False, False, True]
    assert det.eligible(pool) == [b]
    a.healthy = True  # a good scrape: the ejection stays
    clock.advance(9.9)
    assert det.eligible(pool) == [b]
    clock.advance(0.2)
    assert det.eligible(pool) == [a, b]  # readmitted by time
    assert not det.is_ejected(a)
    for _ in range(3):
        det.record_failure(a, pool)
    clock.advance(19.9)  # second ejection: twice as long
    assert det.eligible(pool) == [b]
    clock.advance(0.2)
    assert det.eligible(pool) == [a, b]
    assert det.ejections_total == {"p": 2}


def test_uneject_ends_an_ejection_now_and_the_endpoint_comes_back_slowly() -> None:
    clock = FakeClock()
    det = OutlierDetector(
        OutlierConfig(consecutive_failures=1, base_ejection_s=10), SlowStartRamp(10.0), clock=clock
    )
    a, b = ep("a"), ep("b", inflight_requests=10)
    assert not det.uneject(a)  # not ejected: nothing to end
    det.record_failure(a, [a, b])
    assert det.eligible([a, b]) == [b]
    clock.advance(1)
    assert det.uneject(a)
    assert not det.is_ejected(a)
    assert det.eligible([a, b]) == [a, b]  # readmitted, in slow start: weight 0.1 of 10 in flight admits 1
    assert det.in_slow_start(a)
    a.inflight_requests = 1
    assert det.eligible([a, b]) == [b]
    assert not det.uneject(a)


def test_successes_reset_the_count_and_earn_ejections_back() -> None:
    clock = FakeClock()
    det = OutlierDetector(OutlierConfig(consecutive_failures=3, base_ejection_s=10), 0.0, clock=clock)
    a, b = ep("a"), ep("b")
    det.record_failure(a, [a, b])
    det.record_failure(a, [a, b])
    det.record_success(a)
    assert not det.record_failure(a, [a, b])  # the count started again
    for _ in range(2):
        det.record_failure(a, [a, b])
    clock.advance(10)
    det.eligible([a, b])
    det.record_success(a)  # 10 s after its last failure: one ejection earned back
    for _ in range(3):
        det.record_failure(a, [a, b])
    clock.advance(10.1)  # ejected for 10 s again, not 20
    assert det.eligible([a, b]) == [a, b]


def test_at_most_the_allowed_share_of_a_pool_is_ejected() -> None:
    det = OutlierDetector(
        OutlierConfig(consecutive_failures=1, max_ejected_percent=50), 0.0, clock=FakeClock()
    )
    pool = [ep(n) for n in "abcd"]
    assert [det.record_failure(e, pool) for e in pool] == [True, True, False, False]
    assert det.eligible(pool) == pool[2:]
    lone = [ep("solo", pool="q")]
    assert det.record_failure(
        lone[0], lone
    )  # at least one: a pool of one may be ejected (the cascade moves on)


def test_slow_start_ramps_a_returning_endpoint_and_never_empties_a_pool() -> None:
    clock = FakeClock()
    det = OutlierDetector(OutlierConfig(), SlowStartRamp(10.0), clock=clock)
    a, b = ep("a", inflight_requests=1), ep("b", inflight_requests=10)
    det.returned(a)
    assert det.in_slow_start(a)
    assert det.eligible([a, b]) == [b]  # weight 0.1: at most max(1, 0.1 x 10) in flight, it has 1
    clock.advance(4.0)  # weight 0.4: up to 4
    assert det.eligible([a, b]) == [a, b]
    a.inflight_requests = 4
    assert det.eligible([a, b]) == [b]
    clock.advance(6.0)
    assert det.eligible([a, b]) == [a, b]
    assert not det.in_slow_start(a)  # ramp over
    det.returned(b)
    assert det.eligible([b]) == [b]  # ramping, but nothing to compare with: kept


def test_active_check_verdicts_take_out_and_bring_back_in_slow_start() -> None:
    clock = FakeClock()
    det = OutlierDetector(OutlierConfig(), SlowStartRamp(10.0), clock=clock)
    a, b = ep("a", inflight_requests=1), ep("b")
    det.set_down(a, True)
    assert det.is_down(a)
    assert det.eligible([a, b]) == [b]
    det.set_down(a, False)
    assert det.in_slow_start(a)
    assert det.eligible([a, b]) == [b]  # its one request in flight is its ceiling
    clock.advance(10)
    assert det.eligible([a, b]) == [a, b]


# --- cascade and shedding -------------------------------------------------------------------------------
class Route:
    def __init__(self, cascade: list[str], slo: float | None = None) -> None:
        self.cascade, self.continue_streams, self.ttft_slo_s = cascade, False, slo


def test_plans_and_shedding_on_queue_depth() -> None:
    config = parse_config(
        {"pools": {"onprem": {"preset": "load", "max_waiting": 4}, "eks": {"max_context_tokens": 1000}}}
    )
    cascade = Cascade(config.pools, {"m": Route(["onprem", "eks"], slo=1.0)}, FakeClock())
    plan = cascade.plan("m")
    assert plan.tiers == (
        Tier("onprem", preset="load", max_waiting=4),
        Tier("eks", max_context_tokens=1000),
    )
    assert cascade.plan("other").tiers == (Tier(None),)
    a, b = ep("a"), ep("b")
    a.num_waiting, b.num_waiting = 4, 3
    onprem = plan.tiers[0]
    assert cascade.shed_reason(onprem, plan, [a, b]) is None
    b.num_waiting = 5
    assert cascade.shed_reason(onprem, plan, [a, b]) is SkipReason.SHED_SATURATED


def test_predicted_wait_is_the_queue_ahead_drained_at_the_slot_release_rate() -> None:
    cascade = Cascade({}, {}, FakeClock())
    a = ep("a", num_running=4, num_waiting=0)
    cascade.observe_scrape(a)
    assert cascade.predicted_ttft_s(a, first_byte_waits=9) == 0.0  # no decode time seen yet: no evidence
    cascade.observe_decode("a", 2.0)
    cascade.observe_decode("a", 1.0)  # mean 2.0 + 0.2 * (1.0 - 2.0) = 1.8 s per stream
    assert cascade.predicted_ttft_s(a) == 0.0  # nothing waits: a new request starts at once
    a.num_waiting = 2  # the engine's queue: 2 ahead, 4 slots freeing one every 1.8 / 4 s
    assert cascade.predicted_ttft_s(a) == pytest.approx(2 * 1.8 / 4)
    # Sent since the last scrape: 7 of ours wait for a first byte, all 4 slots taken -> 7 ahead.
    assert cascade.predicted_ttft_s(a, first_byte_waits=7) == pytest.approx(7 * 1.8 / 4)
    # Slots are learned from scrapes (the most seen running): with 1 running, 3 of those 7 start at once.
    a.num_running, a.num_waiting = 1, 0
    cascade.observe_scrape(a)
    assert cascade.predicted_ttft_s(a, first_byte_waits=7) == pytest.approx(4 * 1.8 / 4)
    assert cascade.predicted_ttft_s(a, first_byte_waits=3) == 0.0
    cascade.forget("a")
    assert cascade.predicted_ttft_s(a, first_byte_waits=7) == 0.0


def test_shedding_on_predicted_wait_only_towards_a_tier_not_known_to_be_slower() -> None:
    clock = FakeClock()
    bedrock_pool = {"kind": "bedrock", "region": "us-east-1", "models": {"m": "x"}}
    config = parse_config({"pools": {"eks": {}, "bedrock": bedrock_pool}})
    cascade = Cascade(config.pools, {"m": Route(["eks", "bedrock"], slo=1.0)}, clock)
    plan = cascade.plan("m")
    eks, bedrock = plan.tiers
    a, b = ep("a", num_running=4, num_waiting=4), ep("b", num_running=4, num_waiting=1)
    for e in (a, b):
        cascade.observe_scrape(e)
        cascade.observe_decode(e.id, 2.0)  # 0.5 s per request ahead
    waits = {"a": 0, "b": 0}
    assert cascade.shed_reason(eks, plan, [a, b], waits.__getitem__, bedrock) is None  # b: 0.5 s
    waits["b"] = 3  # a burst to b since its last scrape: 3 ahead, 1.5 s
    # The tier was never measured: one request probes it, the others stay until its first token.
    assert cascade.shed_reason(eks, plan, [a, b], waits.__getitem__, bedrock) is SkipReason.SHED_TTFT
    assert cascade.shed_reason(eks, plan, [a, b], waits.__getitem__, bedrock) is None
    cascade.observe_tier_ttft("bedrock", 2.0)  # the next tier is slower than the 1.5 s wait here: stay
    assert cascade.shed_reason(eks, plan, [a, b], waits.__getitem__, bedrock) is None
    waits["b"], a.num_waiting = 5, 6  # 2.5 s at best here (a: 3 s): the 2 s tier is the faster one now
    assert cascade.shed_reason(eks, plan, [a, b], waits.__getitem__, bedrock) is SkipReason.SHED_TTFT
    waits["b"], a.num_waiting = 3, 4
    clock.advance(TIER_MEMORY_S + 0.1)  # the tier's TTFT is forgotten: one request measures it anew
    assert cascade.tier_ttft_s("bedrock") is None
    assert cascade.shed_reason(eks, plan, [a, b], waits.__getitem__, bedrock) is SkipReason.SHED_TTFT
    assert cascade.shed_reason(eks, plan, [a, b], waits.__getitem__, bedrock) is None
    clock.advance(TIER_MEMORY_S + 0.1)  # a probe that never answered: the next one goes
    assert cascade.shed_reason(eks, plan, [a, b], waits.__getitem__, bedrock) is SkipReason.SHED_TTFT
    vllm_next = Cascade({}, {"m": Route(["eks", "onprem"], slo=1.0)}, clock).plan("m")
    assert cascade.shed_reason(eks, vllm_next, [a, b], waits.__getitem__, vllm_next.tiers[1]) is (
        SkipReason.SHED_TTFT  # an engine tier is judged by its own shedding, not by a probe
    )
    no_slo = cascade.plan("other")  # no ttft_slo_s: never shed on a prediction
    assert cascade.shed_reason(eks, no_slo, [a, b], waits.__getitem__, bedrock) is None


def test_request_size_counts_the_prompt_and_the_answer() -> None:
    assert request_tokens({"max_tokens": 100}, 900, 0) == 1000
    assert request_tokens({"max_completion_tokens": 50, "max_tokens": 100}, 10, 0) == 60
    assert request_tokens({}, 0, 4000) == 1000  # no count from the router: characters / 4


# --- config ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"models": {"m": {"cascade": ["nope"]}}}, "models.m.cascade.0", "no pool or endpoint defines"),
        ({"models": {"m": {"cascade": []}}}, "models.m.cascade", "at least 1"),
        ({"models": {"m": {"cascade": ["a", "a"], "x": 1}}}, "models.m", ""),
        ({"pools": {"a": {"kind": "mystery"}}}, "pools.a.kind", "unknown pool kind 'mystery'"),
        ({"pools": {"a": {"preset": "nope"}}}, "pools.a.preset", "unknown routing preset 'nope'"),
        ({"pools": {"a": {"max_context_tokens": 0}}}, "pools.a.max_context_tokens", "greater than 0"),
        (
            {"resilience": {"retries": {"backoff_base_s": 2, "backoff_max_s": 1}}},
            "resilience",
            "backoff_max_s",
        ),
        ({"resilience": {"budget": {"percent": 120}}}, "resilience.budget.percent", "less than or equal"),
    ],
)
def test_config_errors_name_their_field(data: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert err.value.field is not None
    assert err.value.field.startswith(field)
    assert words in str(err.value)


def test_a_cascade_may_name_pools_of_endpoints() -> None:
    config = parse_config(
        {
            "endpoints": {"static": [{"url": "http://10.0.0.1:8000", "pool": "onprem"}]},
            "pools": {"eks": {"preset": "round-robin"}},
            "models": {"m": {"cascade": ["onprem", "eks"], "continue_streams": True, "ttft_slo_s": 2}},
        }
    )
    assert config.models["m"].cascade == ["onprem", "eks"]
    assert config.resilience.budget.percent == 20  # Envoy's default


# --- streams --------------------------------------------------------------------------------------------
def sse(*docs: Any) -> bytes:
    return b"".join(
        b"data: " + (d if isinstance(d, bytes) else json.dumps(d, separators=(",", ":")).encode()) + b"\n\n"
        for d in docs
    )


def chunk(content: str | None = None, role: str | None = None, **extra: Any) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    delta.update(extra)
    return {"id": "c", "choices": [{"index": 0, "delta": delta}]}


def test_sent_text_reads_whole_events_across_chunks() -> None:
    data = sse(chunk("", role="assistant"), chunk("Hel"), chunk("lo"), b"[DONE]")
    sent = SentText()
    for i in range(0, len(data), 7):  # split anywhere, even inside an event
        sent.feed(data[i : i + 7])
    assert sent.text == "Hello"
    assert sent.events == 2
    assert sent.continuable
    tools = SentText()
    tools.feed(sse(chunk(tool_calls=[{"index": 0, "function": {"name": "f"}}])))
    assert not tools.continuable


def test_continuation_bodies() -> None:
    sent = SentText()
    sent.feed(sse(chunk("Once upon"), chunk(" a time")))
    chat = {
        "model": "m",
        "messages": [{"role": "user", "content": "story"}],
        "max_tokens": 10,
        "stream": True,
    }
    body = continuation_body(chat, True, sent, engine_options=True)
    assert body is not None
    assert body["messages"][-1] == {"role": "assistant", "content": "Once upon a time"}
    assert (body["continue_final_message"], body["add_generation_prompt"], body["max_tokens"]) == (
        True,
        False,
        8,
    )
    managed = continuation_body(chat, True, sent, engine_options=False)
    assert managed is not None
    assert managed["continue_final_message"] is True  # the managed tier's translation reads it
    assert "add_generation_prompt" not in managed
    completion = continuation_body({"prompt": "P:", "max_tokens": 2}, False, sent, engine_options=True)
    assert completion is None  # both tokens were sent: nothing left to continue
    completion = continuation_body({"prompt": "P:"}, False, sent, engine_options=True)
    assert completion == {"prompt": "P:Once upon a time"}
    assert continuation_body({**chat, "n": 2}, True, sent, engine_options=True) is None


def test_opening_event_is_held_and_dropped_from_a_continuation() -> None:
    opening = sse(chunk("", role="assistant"))
    assert is_opening_only(opening)
    assert not is_opening_only(opening + sse(chunk("x")))
    cut = ContinuationFilter()
    assert cut.feed(opening + sse(chunk("rest"))) == sse(chunk("rest"))
    assert cut.feed(opening) == opening  # only the first one goes


def test_a_bedrock_pool_is_a_managed_tier_of_the_cascade() -> None:
    from eksinfer.gateway.bedrock.config import BedrockPoolConfig

    config = parse_config(
        {
            "pools": {
                "eks": {"preset": "load"},
                "bedrock": {"kind": "bedrock", "region": "us-east-1", "models": {"m": "us.meta.x-v1:0"}},
            },
            "models": {"m": {"cascade": ["eks", "bedrock"]}},
        }
    )
    assert isinstance(config.pools["bedrock"], BedrockPoolConfig)
    cascade = Cascade(config.pools, config.models)
    assert [(t.name, t.kind) for t in cascade.plan("m").tiers] == [("eks", "vllm"), ("bedrock", "bedrock")]
    assert list(cascade.managed_pools()) == ["bedrock"]
    with pytest.raises(ConfigError) as err:  # the pool's own model validates it, its errors name pools.NAME
        parse_config({"pools": {"bedrock": {"kind": "bedrock", "region": "mars", "models": {"m": "x"}}}})
    assert err.value.field == "pools.bedrock.region"


# --- stall watchdog -------------------------------------------------------------------------------------
def test_requests_the_engine_does_not_count_make_it_a_suspect_while_it_streams_to_others() -> None:
    watch = StallWatch(stall_after_s=2.0)
    streams = [Watched("e", started=5.0, last_byte=11.9) for _ in range(2)]  # admitted before the fault
    lost = [Watched("e", started=t) for t in (9.0, 9.5, 10.0)]  # sent after it: no first byte
    fresh = Watched("e", started=11.5)
    for w in (*streams, *lost, fresh):
        watch.add(w)
    counts: dict[str, tuple[int, float] | None] = {"e": (2, 0.1)}  # the engine counts only its 2 streams
    assert [e for e, _ in watch.stalled(12.0)] == []  # without the engine's count: busy, not stalled
    found = watch.stalled(12.0, engine_count=counts.__getitem__)
    assert [e for e, _ in found] == ["e"]
    assert set(found[0][1]) == {*lost, fresh}  # every wait is retried, the young one too
    counts["e"] = (5, 0.1)  # a healthy queue: the engine counts all 5 sent before its scrape
    assert watch.stalled(12.0, engine_count=counts.__getitem__) == []
    counts["e"] = (2, 2.5)  # a scrape older than the waits proves nothing
    assert watch.stalled(12.0, engine_count=counts.__getitem__) == []
    counts["e"] = None  # never scraped
    assert watch.stalled(12.0, engine_count=counts.__getitem__) == []
    counts["e"] = (2, 0.1)  # half way (suspect): the same sign, over the shorter time
    assert [e for e, _ in watch.stalled(11.0, after_s=1.0, engine_count=counts.__getitem__)] == ["e"]


def test_a_stalled_endpoint_is_told_from_a_busy_one() -> None:
    watch = StallWatch(stall_after_s=2.0)
    stalled_wait = Watched("stalled", started=10.0)
    busy_wait, busy_stream = Watched("busy", started=10.0), Watched("busy", started=5.0, last_byte=11.5)
    young = Watched("young", started=11.0)
    for w in (stalled_wait, busy_wait, busy_stream, young):
        watch.add(w)
    assert watch.stalled(11.9) == []
    assert watch.stalled(12.1) == [("stalled", [stalled_wait])]  # busy streams to someone; young is young
    busy_stream.last_byte = 12.0
    assert [e for e, _ in watch.stalled(13.9)] == ["stalled", "young"]
    assert [e for e, _ in watch.stalled(14.1)] == ["stalled", "busy", "young"]  # silent for 2 s: stalled too
    assert [e for e, _ in watch.stalled(13.1, after_s=1.0)] == ["stalled", "busy", "young"]  # suspects
    for w in (stalled_wait, busy_wait, busy_stream, young):
        watch.remove(w)
    assert watch.stalled(100.0) == []


def test_a_long_prefill_or_a_non_streamed_answer_does_not_convict_an_endpoint() -> None:
    """A 100k-token prompt alone on an engine, or answers that send no byte until they end, look silent: their
    own waits get a grace (prompt over the prefill floor) or none at all counts, and a non-streamed wait is
    still retried once a streamed one proves the endpoint stalled."""
    watch = StallWatch(stall_after_s=2.0)
    long_prompt = Watched("prefill", started=10.0, grace_s=grace_s(100_000, streamed=True))
    batch = Watched("batch", started=10.0, grace_s=grace_s(50, streamed=False))
    for w in (long_prompt, batch):
        watch.add(w)
    assert long_prompt.grace_s == pytest.approx(100_000 / PREFILL_FLOOR_TOKENS_PER_S)
    assert watch.stalled(12.1) == []  # a grace-less wait would convict both here
    assert watch.stalled(10.0 + 2.0 + long_prompt.grace_s + 0.1) == [("prefill", [long_prompt])]
    assert watch.stalled(1e6) == [("prefill", [long_prompt])]  # the batch endpoint is never convicted
    short = Watched("batch", started=20.0, grace_s=grace_s(50, streamed=True))
    watch.add(short)
    assert [(e, len(w)) for e, w in watch.stalled(22.1)] == [("batch", 2)]  # the prompt is still in grace


def test_an_immediate_ejection_keeps_the_pool_cap() -> None:
    det = OutlierDetector(OutlierConfig(max_ejected_percent=50), 0.0, clock=FakeClock())
    pool = [ep(n) for n in "ab"]
    assert det.eject(pool[0], pool)
    assert not det.eject(pool[1], pool)  # one of two is the cap
    assert det.eligible(pool) == [pool[1]]
