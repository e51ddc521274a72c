"""Scheduler: hand-computed prefix hits, chunked prefill, max-num-seqs, FCFS and recompute preemption."""

from __future__ import annotations

import random

from eksinfer.sim.blocks import BlockPool
from eksinfer.sim.scheduler import Scheduler, SimRequest, Status


def _req(rid: str, prompt: list[int], max_tokens: int, block_size: int) -> SimRequest:
    req = SimRequest(
        rid,
        prompt,
        max_tokens=max_tokens,
        block_size=block_size,
        hash_seed="0",
        arrival_time=0.0,
        ignore_eos=True,
    )
    req.rng_state = random.Random(rid)
    return req


def _sample(req: SimRequest) -> int:
    rng: random.Random = req.rng_state
    return 1000 + rng.randrange(1000)


def _run(sched: Scheduler, max_steps: int = 1000) -> int:
    steps = 0
    while sched.has_work() and steps < max_steps:
        plan = sched.schedule()
        assert plan.scheduled, "scheduler stalled"
        sched.update(plan, _sample)
        steps += 1
    return steps


def _sched(num_blocks: int, block_size: int, **kw: int | bool) -> Scheduler:
    limits: dict[str, int | bool] = {"max_num_seqs": 8, "max_num_batched_tokens": 64, "max_model_len": 256}
    limits.update(kw)
    return Scheduler(BlockPool(num_blocks, block_size), **limits)  # type: ignore[arg-type]


def test_repeated_prefixes_hit_exactly() -> None:
    sched = _sched(64, 16)
    prompt = list(range(100, 140))  # 40 tokens: 2 full blocks
    cases = [
        (prompt, 0),  # cold
        (prompt, 32),  # (40 - 1) // 16 = 2 blocks
        (prompt[:32] + list(range(500, 510)), 32),  # shares 2 blocks
        (prompt[:32], 16),  # 32 tokens: at most (32 - 1) // 16 = 1 block may be reused
        (list(range(7, 47)), 0),  # different first block
    ]
    for i, (tokens, expect) in enumerate(cases):
        req = _req(str(i), tokens, 4, 16)
        sched.add(req)
        _run(sched)
        assert req.num_cached_tokens == expect, i
        assert req.num_output_tokens == 4
    assert sched.stats.prefix_queries == 40 + 40 + 42 + 32 + 40
    assert sched.stats.prefix_hits == 0 + 32 + 32 + 16 + 0


def test_chunked_prefill_respects_budget_and_prices_pairs() -> None:
    sched = _sched(64, 16, max_num_batched_tokens=32)
    req = _req("a", list(range(70)), 2, 16)
    sched.add(req)
    chunks = []
    while sched.has_work():
        plan = sched.schedule()
        chunks.append((plan.prefill_tokens, plan.prefill_attention_pairs, plan.decode_seqs))
        sched.update(plan, _sample)
    # 70 prompt tokens in chunks of 32, 32, 6 (pairs = chunk x (context before + chunk)), then one decode
    assert chunks == [(32, 32 * 32, 0), (32, 32 * 64, 0), (6, 6 * 70, 0), (0, 0, 1)]


def test_without_chunked_prefill_a_long_prompt_waits_for_the_whole_budget() -> None:
    sched = _sched(64, 16, max_num_batched_tokens=64, enable_chunked_prefill=False)
    long = _req("long", list(range(60)), 3, 16)
    short = _req("short", list(range(200, 210)), 3, 16)
    sched.add(short)
    sched.add(long)
    plan = sched.schedule()
    # short (10) fits; long (60) exceeds the remaining 54 tokens and may not be chunked
    assert [r.request_id for r, _ in plan.scheduled] == ["short"]
    sched.update(plan, _sample)
    plan = sched.schedule()
    assert [(r.request_id, n) for r, n in plan.scheduled] == [("short", 1), ("long", 60)]  # 1 + 60 <= 64


def test_max_num_seqs_and_fcfs() -> None:
    sched = _sched(64, 16, max_num_seqs=2)
    reqs = [_req(str(i), [i] * 5, 3, 16) for i in range(4)]
    for r in reqs:
        sched.add(r)
    plan = sched.schedule()
    assert [r.request_id for r, _ in plan.scheduled] == ["0", "1"]
    _run(sched)
    assert all(r.status is Status.FINISHED and r.num_output_tokens == 3 for r in reqs)


def test_preemption_recomputes_and_output_is_unchanged() -> None:
    # 6 usable blocks of 4 tokens; two 8-token prompts growing to 18 tokens cannot both fit
    sched = _sched(7, 4)
    a, b = _req("a", list(range(8)), 10, 4), _req("b", list(range(50, 58)), 10, 4)
    sched.add(a)
    sched.add(b)
    _run(sched)
    assert sched.stats.preemptions == 1
    assert (a.num_preemptions, b.num_preemptions) == (0, 1)
    assert a.num_output_tokens == b.num_output_tokens == 10
    # the victim re-ran its prompt plus 4 generated tokens; its token stream is the same as a solo run
    solo_sched = _sched(64, 4)
    solo = _req("b", list(range(50, 58)), 10, 4)
    solo_sched.add(solo)
    _run(solo_sched)
    assert b.output_ids == solo.output_ids
    # the re-admission was counted as a preempted query: 8 prompt + 4 output tokens, 2 blocks hit
    assert sched.stats.preempted_queries >= 12
    assert sched.pool.num_free_blocks == 6


def test_abort_frees_blocks() -> None:
    sched = _sched(64, 16)
    req = _req("a", list(range(40)), 50, 16)
    sched.add(req)
    sched.update(sched.schedule(), _sample)
    assert sched.pool.num_free_blocks < 63
    assert sched.abort(req)
    assert sched.pool.num_free_blocks == 63
    assert not sched.has_work()
    assert not sched.abort(req)


def test_admission_needs_room_for_the_whole_sequence() -> None:
    # 6 usable blocks of 4 tokens; a holds 3 blocks once decoding, b's 20 tokens need 5 blocks
    sched = _sched(7, 4, max_num_batched_tokens=8)
    a, b = _req("a", list(range(8)), 3, 4), _req("b", list(range(100, 120)), 2, 4)
    sched.add(a)
    sched.add(b)
    first = sched.schedule()
    assert [(r.request_id, n) for r, n in first.scheduled] == [("a", 8)]
    sched.update(first, _sample)
    second = sched.schedule()
    # b's first chunk (7 tokens, 2 blocks) would fit, but vLLM 0.32 checks the full 20-token sequence
    assert [(r.request_id, n) for r, n in second.scheduled] == [("a", 1)]
    assert sched.stats.prefix_queries == 8  # b's lookup did not admit it, so it is not counted
    sched.update(second, _sample)
    _run(sched)
    assert b.num_output_tokens == 2
    assert sched.stats.prefix_queries == 8 + 20
