"""Load shapes and run control: multi-turn context growth, think time, duration, stop, targets, sweep.

The tests that measure time run on a virtual-time event loop (looptime, `virtual_time` marker), with the
fake servers and the bench timing on its clock: sleeps end exactly when due and I/O takes no virtual time,
so rates, durations and saturation verdicts are exact arithmetic on the servers' known delays.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from eksinfer.bench import BenchConfig, run_bench, run_sweep
from eksinfer.bench.hitrate import HITS, QUERIES, metrics_hit_rate, parse_counters

SAMPLES = Path(__file__).parents[1] / "sim" / "data"  # vLLM 0.32 captures
EXACT = 1e-9  # s: float rounding only


def loop_clock():
    return asyncio.get_running_loop().time


@pytest.mark.virtual_time
async def test_multi_turn_resends_history_with_think_time(fake_server):
    w = {"type": "multi-turn", "num_conversations": 1, "turns": 3, "system_prompt_len": 10, "user_len": 4,
         "output_len": 2, "think_time_s": 0.1}  # fmt: skip
    clock = loop_clock()
    async with fake_server(clock=clock) as (fake, url):
        cfg = BenchConfig(target=url, model="fake-model", endpoint="chat", num_requests=3, workload=w)
        result = await run_bench(cfg, clock=clock)
    # the fake answers " tok tok" (2 words): 10 + 4, then + 2 + 4, then + 2 + 4 words
    assert fake.prompt_words == [14, 20, 26]
    recs = result.records
    assert [r.turn for r in recs] == [0, 1, 2]
    for prev, nxt in itertools.pairwise(recs):
        # exactly the think time between a reply and the next turn
        assert nxt.sent_s - (prev.sent_s + prev.e2e_s) == pytest.approx(0.1, abs=EXACT)


@pytest.mark.virtual_time
async def test_duration_mode_and_round_robin_targets(fake_server):
    clock = loop_clock()
    async with (
        fake_server(ttft_s=0.01, clock=clock) as (fa, url_a),
        fake_server(ttft_s=0.01, clock=clock) as (fb, url_b),
    ):
        cfg = BenchConfig(
            target=[url_a, url_b],
            model="fake-model",
            concurrency=2,
            duration_s=0.3,
            max_tokens=1,
            api_key="sk-test",
        )
        started = clock()
        result = await run_bench(cfg, clock=clock)
        elapsed = clock() - started
    # 2 in flight, 10 ms each: 30 waves, the last one done at 0.3 s, when the phase stops sending
    assert elapsed == pytest.approx(0.3, abs=EXACT)
    assert result.summary["requests"]["completed"] == 2 * 30
    assert fa.requests == fb.requests == 30  # round robin over the two targets
    assert set(fa.authorization + fb.authorization) == {"Bearer sk-test"}


@pytest.mark.virtual_time
async def test_stop_event_keeps_what_was_measured(fake_server):
    clock = loop_clock()
    async with fake_server(ttft_s=0.01, itl_s=0.01, clock=clock) as (_, url):
        cfg = BenchConfig(target=url, model="fake-model", concurrency=4, num_requests=1000, max_tokens=20)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.5, stop.set)
        result = await run_bench(cfg, stop=stop, clock=clock)
    s = result.summary
    assert result.interrupted
    # 4 in flight, 200 ms each (10 + 19 x 10 ms): two waves done by 0.4 s, the third cut at 0.5 s
    assert s["requests"]["completed"] == 8
    assert s["requests"]["failed"] == 0  # in-flight requests cut by the stop are left out, not failures
    assert sum(r.error == "cancelled" for r in result.records) == 4
    assert s["ttft_ms"]["count"] == s["requests"]["completed"]


@pytest.mark.virtual_time
async def test_sweep_with_given_rates_stops_at_saturation(fake_server):
    # The fake serves one request at a time, 30 ms each: capacity 33 req/s. 10 req/s keeps up; 200 req/s
    # saturates (completions 30 ms apart, sends 5 ms apart); 400 is never run.
    clock = loop_clock()
    async with fake_server(ttft_s=0.03, slots=1, clock=clock) as (_, url):
        cfg = BenchConfig(
            target=url, model="fake-model", num_requests=12, max_tokens=1, warmup=2, arrival="constant"
        )
        sweep = await run_sweep(cfg, [10.0, 200.0, 400.0], clock=clock)
    assert [s.offered_rate for s in sweep.stages] == [10.0, 200.0]
    assert [s.saturated for s in sweep.stages] == [False, True]
    assert sum(r.warmup for r in sweep.stages[0].result.records) == 2
    assert sum(r.warmup for r in sweep.stages[1].result.records) == 0
    doc = sweep.to_json()
    assert [r["offered_rate"] for r in doc["runs"]] == [10.0, 200.0]
    assert doc["runs"][0]["completion_rate"] == pytest.approx(10.0)
    assert doc["runs"][1]["completion_rate"] == pytest.approx(1 / 0.03)


@pytest.mark.virtual_time
async def test_auto_sweep_probes_then_stays_below_peak(fake_server):
    clock = loop_clock()
    async with fake_server(ttft_s=0.02, clock=clock) as (_, url):
        cfg = BenchConfig(target=url, model="fake-model", num_requests=12, max_tokens=1)
        sweep = await run_sweep(cfg, None, num_stages=2, probe_concurrency=2, clock=clock)
    probe, *stages = sweep.stages
    assert probe.offered_rate is None
    # 2 in flight, 20 ms each: 100 req/s at most; the probe's 12 requests, 6 waves, finish in 120 ms
    assert 50 <= sweep.peak_rate <= 100
    assert [s.offered_rate for s in stages] == pytest.approx([sweep.peak_rate / 2, sweep.peak_rate])


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="vllm-samples not found")
def test_hit_rate_counters_from_real_vllm_metrics():
    idle = parse_counters((SAMPLES / "metrics_idle.txt").read_text())
    after = parse_counters((SAMPLES / "metrics_after_requests.txt").read_text())
    assert after == {QUERIES: 546.0, HITS: 0.0}  # the two files come from separate server runs
    assert idle == {QUERIES: 658.0, HITS: 256.0}
    assert metrics_hit_rate({"u": {QUERIES: 0.0, HITS: 0.0}}, {"u": idle})["hit_rate"] == pytest.approx(
        256 / 658
    )


def test_hit_rate_math_sums_engines_and_urls():
    text = (
        'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 100.0\n'
        'vllm:prefix_cache_queries_total{engine="1",model_name="m"} 300\n'
        'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 50\n'
        "vllm:prefix_cache_hits_created 1.7e9\n"
    )
    assert parse_counters(text) == {QUERIES: 400.0, HITS: 50.0}
    # a sample may carry a timestamp (milliseconds) after its value: it is not the value
    stamped = 'vllm:prefix_cache_hits_total{engine="0"} 7 1764720000000\n'
    assert parse_counters(stamped) == {QUERIES: 0.0, HITS: 7.0}
    before = {"a": {QUERIES: 100.0, HITS: 0.0}, "b": {QUERIES: 0.0, HITS: 0.0}, "c": None}
    after = {"a": {QUERIES: 300.0, HITS: 150.0}, "b": {QUERIES: 200.0, HITS: 50.0}, "c": None}
    out = metrics_hit_rate(before, after)
    assert out["hit_rate"] == pytest.approx(200 / 400)
    assert out["per_url"]["a"] == pytest.approx(0.75)
    assert out["per_url"]["b"] == pytest.approx(0.25)


@pytest.mark.virtual_time
async def test_open_loop_capped_by_concurrency(fake_server):
    # 50 req/s offered, but one request in flight and each takes 50 ms: sends wait for the slot, so the
    # achieved rate is 20 req/s and the wait shows up as send lag (requests queued in the client).
    clock = loop_clock()
    async with fake_server(ttft_s=0.05, clock=clock) as (_, url):
        cfg = BenchConfig(
            target=url,
            model="fake-model",
            rate=50.0,
            arrival="constant",
            concurrency=1,
            num_requests=6,
            max_tokens=1,
        )
        result = await run_bench(cfg, clock=clock)
    sent = sorted(r.sent_s for r in result.records)
    assert sent == pytest.approx([0.05 * i for i in range(6)], abs=EXACT)  # each as the slot frees
    assert result.summary["client"]["lag_ms"]["max"] == pytest.approx(150)  # 6th: due at 100 ms, sent at 250


async def test_session_header_is_per_conversation(fake_server):
    seen: list[str] = []
    async with fake_server() as (fake, url):
        w = {"type": "multi-turn", "num_conversations": 2, "turns": 2, "system_prompt_len": 2, "user_len": 2}
        cfg = BenchConfig(target=url, model="fake-model", concurrency=1, num_requests=4, workload=w,
                          session_header="x-session-id", max_tokens=1)  # fmt: skip
        result = await run_bench(cfg)
        seen = fake.session_ids
    assert [r.conversation_id for r in result.records] == [0, 0, 1, 1]
    assert seen == ["conv-0", "conv-0", "conv-1", "conv-1"]


async def test_reset_prefix_cache_makes_a_rerun_start_cold(fake_server):
    w = {"type": "shared-prefix", "num_groups": 1, "num_prompts_per_group": 2, "system_prompt_len": 32,
         "question_len": 16, "output_len": 1, "shuffle": False}  # fmt: skip
    async with fake_server(block_size=16) as (_, url):
        base = {
            "target": url,
            "model": "fake-model",
            "num_requests": 2,
            "workload": w,
            "metrics_urls": [url + "/metrics"],
        }
        warm = await run_bench(BenchConfig(**base))
        again = await run_bench(BenchConfig(**base))
        cold = await run_bench(BenchConfig(**base, reset_prefix_cache=True))
    # 48 words = 3 blocks per prompt. First run: prompt 1 misses all, prompt 2 hits the 2 system blocks.
    assert warm.summary["hit_rate"]["metrics"] == pytest.approx(32 / 96)
    assert again.summary["hit_rate"]["metrics"] == pytest.approx(1.0)
    assert cold.summary["hit_rate"]["metrics"] == pytest.approx(32 / 96)


@pytest.mark.virtual_time
async def test_per_target_breakdown(fake_server):
    clock = loop_clock()
    async with (
        fake_server(ttft_s=0.01, clock=clock) as (_, url_a),
        fake_server(ttft_s=0.05, clock=clock) as (_, url_b),
    ):
        cfg = BenchConfig(
            target=[url_a, url_b], model="fake-model", concurrency=2, num_requests=6, max_tokens=1
        )
        result = await run_bench(cfg, clock=clock)
    per = result.summary["per_target"]
    assert (per[url_a]["completed"], per[url_b]["completed"]) == (3, 3)
    assert per[url_a]["ttft_ms"]["p50"] == pytest.approx(10)
    assert per[url_b]["ttft_ms"]["p50"] == pytest.approx(50)


async def test_on_record_sees_every_request(fake_server):
    seen = []
    async with fake_server() as (_, url):
        cfg = BenchConfig(
            target=url, model="fake-model", concurrency=2, num_requests=5, warmup=3, max_tokens=1
        )
        result = await run_bench(cfg, on_record=seen.append)
    assert len(seen) == 8
    assert sum(r.warmup for r in seen) == 3
    assert {id(r) for r in seen} == {id(r) for r in result.records}  # the same objects the result holds
