"""Shedding on a predicted TTFT that holds the prefill of the prompts ahead and of the request's own prompt
(resilience/cascade.py, resilience/prefill.py): the prefill fit from synthetic cumulative counters, the
prediction over synthetic endpoint states (injected clock), and one run through a real gateway with two
simulated engines (no GPU here), the first slow enough at prefill that a long prompt must shed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from eksinfer.gateway.config import parse_config
from eksinfer.gateway.proxy import POOL_HEADER
from eksinfer.gateway.resilience.cascade import Cascade, PromptCost
from eksinfer.gateway.resilience.errors import SkipReason
from eksinfer.gateway.resilience.prefill import PrefillFit
from eksinfer.gateway.runtime import build_runtime
from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState
from eksinfer.gateway.scrape import apply_metrics, parse_metrics
from tests.gateway.test_cascade import metrics, sample
from tests.gateway.test_observability import access_lines  # noqa: F401 - the fixture
from tests.gateway.test_routing import chat, engine_stored, make_router
from tests.gateway.test_routing import endpoints as routing_endpoints
from tests.sim.conftest import StartCluster
from tests.sim.conftest import start as start_sim  # noqa: F401 - the fixture
from tests.waiting import FakeClock, until

pytestmark = pytest.mark.timeout(60)

STEP_S = 0.03  # the synthetic engine: 30 ms a step, 20,000 uncached prompt tokens a second
S_PER_TOKEN = 1 / 20_000


def engine_prefill_s(tokens: int) -> float:
    return STEP_S + S_PER_TOKEN * tokens


class Counters:
    """An engine's cumulative histogram `_count`/`_sum`s, as successive scrapes read them."""

    def __init__(self) -> None:
        self.requests = self.tokens = self.seconds = 0.0
        self.steps = self.step_s = 0.0

    def finish(self, *prompts: int) -> None:
        for tokens in prompts:
            self.requests += 1
            self.tokens += tokens
            self.seconds += engine_prefill_s(tokens)
            self.steps += 10  # ten streamed tokens, one step apart
            self.step_s += 10 * STEP_S

    def scrape_into(self, state: EndpointState) -> None:
        state.prefill_requests, state.prefill_tokens, state.prefill_seconds = (
            self.requests,
            self.tokens,
            self.seconds,
        )
        state.itl_count, state.itl_seconds = self.steps, self.step_s

    def feed(self, fit: PrefillFit) -> None:
        fit.observe(self.requests, self.tokens, self.seconds, self.steps, self.step_s)


def ep(name: str, **fields: Any) -> EndpointState:
    return EndpointState(id=EndpointId(name), url=f"http://{name}", **fields)


# --- what the scrape reads -----------------------------------------------------------------------------
SAMPLES = Path(__file__).parents[1] / "sim" / "data"  # vLLM 0.32 captures


@pytest.mark.skipif(not SAMPLES.exists(), reason="the vLLM golden samples are not on this machine")
def test_the_prefill_histograms_of_a_real_vllm_page() -> None:
    m = parse_metrics((SAMPLES / "metrics_after_requests.txt").read_text())
    assert (m.prefill_requests, m.prefill_tokens, m.itl_count) == (4, 546, 12)
    assert m.prefill_seconds == pytest.approx(0.15297745400130225)
    assert m.itl_seconds == pytest.approx(0.09577334799996606)


def test_the_prefill_histograms_of_a_data_parallel_engine_are_summed() -> None:
    """prometheus_client writes each child's buckets, `_count` and `_sum` together: the engines' `_sum`
    lines are not adjacent."""
    lines = []
    for engine, (count, total) in enumerate([(3, 1.5), (2, 0.5)]):
        labels = f'{{engine="{engine}",model_name="m"}}'
        lines += [
            f'vllm:request_prefill_time_seconds_bucket{{engine="{engine}",le="+Inf"}} {count}',
            f"vllm:request_prefill_time_seconds_count{labels} {count}",
            f"vllm:request_prefill_time_seconds_sum{labels} {total}",
            f"vllm:request_prefill_time_seconds_created{labels} 1.7e9",
        ]
    for engine, tokens in enumerate([900, 100]):
        lines.append(f'vllm:request_prefill_kv_computed_tokens_sum{{engine="{engine}"}} {tokens}')
    m = parse_metrics("# HELP x\n" + "\n".join(lines) + "\n")
    assert (m.prefill_requests, m.prefill_seconds, m.prefill_tokens) == (5, 2.0, 1000)
    assert (m.itl_count, m.itl_seconds) == (None, None)  # not on the page: no step time, a = 0


@pytest.mark.skipif(not SAMPLES.exists(), reason="the vLLM golden samples are not on this machine")
def test_a_scrape_without_the_histograms_keeps_the_last_counts() -> None:
    """The scraper reads the histograms every HISTOGRAMS_EVERY pages: in between, the state keeps the last
    cumulative counts (a fit sees no finished request then, not a counter gone back to zero)."""
    page = (SAMPLES / "metrics_after_requests.txt").read_text()
    state = ep("a")
    apply_metrics(state, parse_metrics(page), 1.0)
    apply_metrics(state, parse_metrics(page, histograms=False), 2.0)
    assert (state.prefill_requests, state.prefill_tokens, state.itl_count) == (4, 546, 12)
    assert state.scraped_at == 2.0


# --- the prefill fit ------------------------------------------------------------------------------------
def test_no_evidence_before_two_scrapes_with_finished_requests() -> None:
    fit, engine = PrefillFit(), Counters()
    assert fit.prefill_s(50_000) == 0.0
    engine.finish(8000)
    engine.feed(fit)  # the first page is a baseline: what finished before it has no interval
    assert fit.prefill_s(50_000) == 0.0
    engine.feed(fit)  # nothing finished since
    assert fit.prefill_s(50_000) == 0.0
    engine.finish(8000)
    engine.feed(fit)
    assert fit.prefill_s(50_000) == pytest.approx(engine_prefill_s(50_000))


def test_short_prompts_alone_price_a_long_prompt_at_the_engines_rate() -> None:
    """The step (inter-token latency) is the fixed part, so 100-token prompts, 35 ms each and mostly step,
    do not make a 100k-token prompt cost 35 s (their ratio) but 5.03 s."""
    fit, engine = PrefillFit(), Counters()
    engine.feed(fit)
    for _ in range(5):
        engine.finish(100, 100, 100)
        engine.feed(fit)
    assert fit.a_s == pytest.approx(STEP_S)
    assert 1 / fit.b_s_per_token == pytest.approx(20_000)
    assert fit.prefill_s(100_000) == pytest.approx(engine_prefill_s(100_000))
    assert fit.prefill_s(100_000) < 0.2 * (engine.seconds / engine.tokens) * 100_000
    assert fit.mean_tokens == pytest.approx(100)


def test_mixed_prompts_and_a_restarted_engine() -> None:
    fit, engine = PrefillFit(), Counters()
    engine.feed(fit)
    engine.finish(100, 4000)
    engine.feed(fit)
    engine.finish(30_000)
    engine.feed(fit)
    assert fit.prefill_s(8000) == pytest.approx(engine_prefill_s(8000))
    assert fit.mean_tokens == pytest.approx((0.95 * 4100 + 30_000) / (0.95 * 2 + 1))
    restarted = Counters()  # the same address, counters from zero: that delta is skipped, the next counts
    restarted.finish(10)
    restarted.feed(fit)
    assert fit.prefill_s(8000) == pytest.approx(engine_prefill_s(8000))
    restarted.finish(200)
    restarted.feed(fit)
    assert fit.prefill_s(8000) == pytest.approx(engine_prefill_s(8000))
    assert fit.mean_tokens < 30_000


def test_a_page_with_nan_or_inf_teaches_nothing() -> None:
    """A NaN in the sums would make every prediction NaN, and shedding read NaN as over the SLO."""
    fit, engine = PrefillFit(), Counters()
    engine.feed(fit)
    engine.finish(4000)
    engine.feed(fit)
    good = fit.prefill_s(8000)
    for bad in (math.nan, math.inf):
        fit.observe(engine.requests + 1, bad, engine.seconds + 1, bad, bad)
        fit.observe(engine.requests + 2, engine.tokens + 10, bad, engine.steps + 1, bad)
        assert fit.prefill_s(8000) == pytest.approx(good)
    learned_requests = fit.n_sum
    for _ in range(2):  # finite again: the first page is a new baseline, the next one an interval
        engine.finish(4000)
        engine.feed(fit)
    assert fit.n_sum > learned_requests
    assert fit.prefill_s(8000) == pytest.approx(good)
    assert math.isfinite(fit.mean_tokens)


def test_the_fixed_part_never_exceeds_the_mean_prefill() -> None:
    """An engine whose steps are slow (long decode batches) but whose prompts all came from cache."""
    fit = PrefillFit()
    fit.observe(0, 0, 0, 0, 0)
    fit.observe(4, 0, 0.4, 100, 50.0)  # 0.5 s a step, 0.1 s per prefill, no token computed
    assert fit.a_s == pytest.approx(0.1)
    assert fit.b_s_per_token == 0.0
    assert fit.prefill_s(0) == pytest.approx(0.1)


# --- the prediction -------------------------------------------------------------------------------------
class Route:
    def __init__(self, cascade: list[str], slo: float | None = None) -> None:
        self.cascade, self.continue_streams, self.ttft_slo_s = cascade, False, slo


def learned(cascade: Cascade, *states: EndpointState, prompts: tuple[int, ...] = (100, 4000)) -> None:
    """Scrapes each state twice around finished requests of `prompts`, so its fit is the synthetic
    engine's."""
    for state in states:
        engine = Counters()
        engine.scrape_into(state)
        cascade.observe_scrape(state)
        engine.finish(*prompts)
        engine.scrape_into(state)
        cascade.observe_scrape(state)


@pytest.fixture
def bedrock_after() -> tuple[Cascade, Any]:
    bedrock_pool = {"kind": "bedrock", "region": "us-east-1", "models": {"m": "x"}}
    config = parse_config({"pools": {"eks": {}, "bedrock": bedrock_pool}})
    cascade = Cascade(config.pools, {"m": Route(["eks", "bedrock"], slo=2.0)}, FakeClock())
    cascade.observe_tier_ttft("bedrock", 1.0)  # the next tier answers its first token in 1 s
    return cascade, cascade.plan("m")


def test_a_long_prompt_on_an_idle_engine_with_a_slow_prefill_sheds_to_a_faster_tier(
    bedrock_after: tuple[Cascade, Any],
) -> None:
    cascade, plan = bedrock_after
    eks, bedrock = plan.tiers
    a, b = ep("a", num_running=2, num_waiting=0), ep("b", num_running=1, num_waiting=0)
    learned(cascade, a, b)
    for state in (a, b):
        cascade.observe_decode(state.id, 4.0)
    # No queue anywhere: the old prediction (queue only) was 0 s, and the request stayed for 3.2 s.
    long = PromptCost(64_000)
    assert cascade.predicted_ttft_s(a, prompt=long) == pytest.approx(engine_prefill_s(64_000))
    assert cascade.shed_reason(eks, plan, [a, b], next_tier=bedrock) is None  # before routing: no prompt
    assert cascade.shed_reason(eks, plan, [a, b], next_tier=bedrock, prompt=long) is SkipReason.SHED_TTFT
    # A short prompt is unchanged: one step and its tokens, far under the SLO.
    short = PromptCost(300)
    assert cascade.predicted_ttft_s(b, prompt=short) == pytest.approx(engine_prefill_s(300))
    assert cascade.shed_reason(eks, plan, [a, b], next_tier=bedrock, prompt=short) is None
    # The same long prompt mostly cached on b (60k of 64k, the KV index's prediction): b takes it in 0.23 s.
    cached = PromptCost(64_000, {"b": 60_000})
    assert cascade.predicted_ttft_s(b, prompt=cached) == pytest.approx(engine_prefill_s(4000))
    assert cascade.shed_reason(eks, plan, [a, b], next_tier=bedrock, prompt=cached) is None
    # Slower next tier (5 s): the 3.2 s prefill here is the better wait.
    cascade.observe_tier_ttft("bedrock", 21.0)  # mean 1 + 0.2 * 20 = 5 s
    assert cascade.shed_reason(eks, plan, [a, b], next_tier=bedrock, prompt=long) is None


def test_prompts_ahead_are_the_gateways_own_or_the_queue_at_the_mean_size() -> None:
    cascade = Cascade({}, {}, FakeClock())
    a = ep("a", num_running=1, num_waiting=0)
    learned(cascade, a, prompts=(8000, 8000))  # mean 8,000 uncached tokens a request
    # Ours, streamed: 30,000 uncached tokens before their first token, 2,000 of them this request's own
    # (charged when it was routed here): 28,000 ahead at 20,000 a second, then its own 2,000. Non-streamed
    # requests hold 50,000 more in the ledger until their answers end, long after their prefill: not ahead.
    a.inflight_streamed_prompt_tokens = 30_000
    a.inflight_prompt_tokens = 80_000
    own = PromptCost(2000, charged_on="a", charged_tokens=2000)
    assert cascade.predicted_ttft_s(a, prompt=own) == pytest.approx(1.4 + engine_prefill_s(2000))
    elsewhere = PromptCost(2000, charged_on="b", charged_tokens=2000)  # charged to another endpoint
    assert cascade.predicted_ttft_s(a, prompt=elsewhere) == pytest.approx(1.5 + engine_prefill_s(2000))
    # Other clients' queue: 5 waiting at the mean 8,000 tokens is more than ours.
    a.num_waiting = 5
    assert cascade.predicted_ttft_s(a, prompt=own) == pytest.approx(2.0 + engine_prefill_s(2000))
    assert cascade.predicted_ttft_s(a) == pytest.approx(2.0)  # before routing: the queue only


def test_a_slot_bound_queue_and_its_prefill_overlap() -> None:
    """Waiting for a slot, the prompts ahead are prefilled meanwhile: the larger of the two, not the sum."""
    cascade = Cascade({}, {}, FakeClock())
    a = ep("a", num_running=4, num_waiting=4)
    learned(cascade, a, prompts=(400, 400))
    cascade.observe_decode("a", 8.0)  # 4 ahead x 8 s / 4 slots = 8 s, their prefill 4 x 400 / 20k = 0.08 s
    assert cascade.predicted_ttft_s(a, prompt=PromptCost(400)) == pytest.approx(8.0 + engine_prefill_s(400))


def test_predicting_learns_nothing() -> None:
    """Slots come from scrapes only: reading a state with 8 running does not make 8 the endpoint's slots."""
    cascade = Cascade({}, {}, FakeClock())
    a = ep("a", num_running=8, num_waiting=0)
    cascade.observe_decode("a", 2.0)
    # 8 running read as 8 slots, none free: the 3 ours wait 3 x 2 s / 8.
    assert cascade.predicted_ttft_s(a, first_byte_waits=3) == pytest.approx(3 * 2.0 / 8)
    a.num_running = 1
    # Had the reading above learned 8 slots, 7 would be free and the 3 ours would start at once (0 s).
    assert cascade.predicted_ttft_s(a, first_byte_waits=3) == pytest.approx(3 * 2.0 / 1)
    cascade.observe_scrape(ep("a", num_running=8))
    assert cascade.predicted_ttft_s(a, first_byte_waits=3) == 0.0  # learned from a scrape: 7 free


async def test_the_routers_decision_prices_the_prompt_on_every_candidate() -> None:
    """The KV index's predicted hit per candidate reaches the prediction, and the request's own charge on
    the endpoint the router chose is not counted as a prompt ahead of itself."""
    router = make_router()
    router.start()
    eps = routing_endpoints(3)
    for e in eps:
        router.endpoint_added(e)
    router.index.apply_event("e2", engine_stored(chat("first question")))
    decision = await router.route("m", {**chat("second question"), "stream": True}, {}, eps)
    await router.stop()
    assert decision.endpoint.id == "e2"
    cached = decision.predicted_cached_tokens
    assert cached >= 128
    assert decision.cached_tokens_by_endpoint.get("e2") == cached
    assert not decision.cached_tokens_by_endpoint.get("e0")
    prompt = PromptCost.of(decision)
    assert (prompt.uncached("e2"), prompt.uncached("e0")) == (decision.prompt_tokens - cached, prompt.tokens)
    assert eps[2].inflight_streamed_prompt_tokens == prompt.charged_tokens == prompt.uncached("e2")
    assert prompt.charged_on == "e2"
    cascade = Cascade({}, {}, FakeClock())
    for e in eps:
        e.num_running, e.num_waiting = 1, 0
        learned(cascade, e)
    assert cascade.predicted_ttft_s(eps[2], prompt=prompt) == pytest.approx(
        engine_prefill_s(prompt.uncached("e2"))
    )
    assert cascade.predicted_ttft_s(eps[0], prompt=prompt) == pytest.approx(engine_prefill_s(prompt.tokens))
    router.on_first_token(decision)  # prefilled: no longer ahead of anyone
    assert (eps[2].inflight_streamed_prompt_tokens, eps[2].inflight_prompt_tokens) == (0, 0)


async def test_only_streamed_prompts_count_as_prompts_ahead_in_the_ledger() -> None:
    router = make_router("round-robin")
    router.start()
    (e,) = routing_endpoints(1)
    plain = await router.route("m", chat("a question"), {}, [e])
    streamed = await router.route("m", {**chat("a question"), "stream": True}, {}, [e])
    await router.stop()
    assert e.inflight_prompt_tokens == plain.prompt_tokens + streamed.prompt_tokens
    assert e.inflight_streamed_prompt_tokens == streamed.prompt_tokens
    assert PromptCost.of(plain).charged_on is None
    router.on_finish(streamed, ok=True)
    router.on_finish(streamed, ok=True)  # idempotent
    assert (e.inflight_streamed_prompt_tokens, e.inflight_prompt_tokens) == (0, plain.prompt_tokens)


# --- end to end: a real gateway, two simulated engines --------------------------------------------------
SIM_MODEL = "llama-3.1-8b"
SLO_S = 0.5


def words(tokens: int, salt: str) -> str:
    """A prompt of about `tokens` tokens (the simulator's tokenizer reads this sentence as about 3.7
    characters a token, close to the gateway's 4 when it does not tokenize), starting with `salt`, so no
    block of it is cached from another prompt."""
    return salt + " " + "the cat sat on the mat " * (tokens // 6)


async def test_a_long_prompt_sheds_from_a_slow_prefill_engine_and_a_short_one_stays(
    start_sim: StartCluster,  # noqa: F811 - the fixture
    access_lines: list[str],  # noqa: F811 - the fixture
) -> None:
    """onprem prefills at 10x the simulated H100's time (about 1.5 s of wall time for a 6,000-token
    prompt), eks at full speed; the model's TTFT SLO is 0.5 s. With no queue anywhere, the queue-only
    prediction sent every prompt to onprem; learned from onprem's own prefill histograms, a long prompt
    sheds to eks and a short one (one step, about 0.07 s) stays."""
    sizes = {"num_gpu_blocks": 4096, "max_model_len": 16384}
    slow, fast = await start_sim(1, time_scale=10.0, **sizes), await start_sim(1, **sizes)
    static = [
        {"url": slow.urls[0], "pool": "onprem", "models": [SIM_MODEL]},
        {"url": fast.urls[0], "pool": "eks", "models": [SIM_MODEL]},
    ]
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "endpoints": {"static": static},
            "scrape": {"interval_s": 0.05},
            "routing": {"preset": "round-robin"},
            "resilience": {"health_checks": {"enabled": False}, "slow_start_s": 0, "stall_after_s": 0},
            "models": {SIM_MODEL: {"cascade": ["onprem", "eks"], "ttft_slo_s": SLO_S}},
            "observability": {"access_log": True},
        }
    )
    runtime = build_runtime(config)
    await runtime.start()
    await until(lambda: all(s.models for s in runtime.registry.all()), what="engines' models scraped")
    onprem = next(s for s in runtime.registry.all() if s.pool == "onprem")
    # The fit learns from differences between pages: one page must land before the first request ends.
    await until(lambda: onprem.scraped_at is not None, what="onprem's first /metrics page")
    cascade = runtime.resilience.cascade
    base = f"http://127.0.0.1:{runtime.port}/v1/chat/completions"

    async def ask(client: httpx.AsyncClient, prompt: str) -> str:
        body = {"model": SIM_MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 3}
        r = await client.post(base, json=body, timeout=30)
        assert r.status_code == 200, r.text
        return r.headers[POOL_HEADER]

    long_tokens = PromptCost(6000)
    try:
        async with httpx.AsyncClient() as client:
            # Nothing learned yet: the long prompts go to onprem like any other (and teach the fit).
            assert await ask(client, words(6000, "w")) == "onprem"
            assert await ask(client, words(40, "s")) == "onprem"
            await until(
                lambda: cascade.predicted_ttft_s(onprem, prompt=long_tokens) > SLO_S,
                what="onprem's prefill learned from its histograms",
            )
            assert cascade.predicted_ttft_s(onprem, prompt=PromptCost(40)) < SLO_S
            assert await ask(client, words(6000, "x")) == "eks"
            assert await ask(client, words(40, "y")) == "onprem"
        found = await metrics(runtime)
        assert sample(found, "eksinfer_gateway_fallbacks_total", pool="onprem", reason="shed_ttft") == 1
        assert sample(found, "eksinfer_gateway_requests_total", pool="eks") == 1
        await until(lambda: not any(s.inflight_requests for s in runtime.registry.all()), what="released")
        assert [s.inflight_prompt_tokens for s in runtime.registry.all()] == [0, 0]  # the shed one too
        await until(lambda: len(access_lines) == 4, what="four access lines")
        shed = json.loads(access_lines[2])
        assert (shed["pool"], shed["attempts"]) == ("eks", 1)  # the decision shed on onprem is no attempt
    finally:
        await runtime.stop()
