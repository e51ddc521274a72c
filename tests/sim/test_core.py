"""The engine core on a virtual clock: no asyncio, no wall time; step times from the performance model."""

from __future__ import annotations

from eksinfer.catalog import get_gpu, get_model
from eksinfer.perf import build_engine_perf
from eksinfer.sim.core import CoreConfig, EngineCore
from eksinfer.sim.scheduler import SimRequest, StepPlan


class _Recorder:
    def __init__(self) -> None:
        self.tokens: list[tuple[str, float, float]] = []  # (request, now, previous token time)
        self.steps = 0

    def on_schedule(self, core: EngineCore, plan: StepPlan) -> None:
        pass

    def on_token(self, req: SimRequest, now: float) -> None:
        self.tokens.append((req.request_id, now, req.last_token_time))

    def on_step(self, emitted: object, now: float) -> None:
        self.steps += 1


def _core(observer: _Recorder | None = None, **kw: int) -> EngineCore:
    perf = build_engine_perf(get_model("llama-3.1-8b"), get_gpu("H100"), tensor_parallel_size=1)
    cfg = CoreConfig(
        num_gpu_blocks=kw.get("num_gpu_blocks", 256),
        block_size=16,
        max_num_seqs=8,
        max_num_batched_tokens=kw.get("max_num_batched_tokens", 64),
        max_model_len=1024,
        natural_output_tokens=0,
    )
    now = [0.0]
    return EngineCore(cfg, perf=perf, sample_space=range(100, 200), clock=lambda: now[0], observer=observer)


def test_virtual_time_steps_match_the_performance_model() -> None:
    rec = _Recorder()
    core = _core(rec)
    req = core.add_request(list(range(3, 103)), max_tokens=3, ignore_eos=True)
    now = 0.0
    durations = []
    while core.has_work():
        _, step_s, _ = core.step(now)
        durations.append(step_s)
        now += step_s
    step = core.perf.step_time_s
    expect = [
        step(prefill_tokens=64, prefill_attention_pairs=64 * 64, decode_seqs=0, decode_context_tokens=0),
        step(prefill_tokens=36, prefill_attention_pairs=36 * 100, decode_seqs=0, decode_context_tokens=0),
        step(prefill_tokens=0, prefill_attention_pairs=0, decode_seqs=1, decode_context_tokens=101),
        step(prefill_tokens=0, prefill_attention_pairs=0, decode_seqs=1, decode_context_tokens=102),
    ]
    assert durations == expect
    assert core.num_steps == 4 == rec.steps
    assert req.finish_reason == "length"
    assert req.first_token_time == sum(expect[:2])
    assert req.last_token_time == now == sum(expect)
    # the observer sees each token before its time is stamped: the previous token's time
    assert [t[2] for t in rec.tokens] == [0.0, sum(expect[:2]), sum(expect[:3])]


def test_arrivals_are_stamped_by_the_injected_clock_and_generation_is_seeded() -> None:
    a, b = _core(), _core()
    ra = a.add_request([5, 6, 7], max_tokens=6, seed=3, arrival_time=12.5)
    rb = b.add_request([5, 6, 7], max_tokens=6, seed=3)
    for core in (a, b):
        t = 0.0
        while core.has_work():
            _, step_s, _ = core.step(t)
            t += step_s
    assert ra.arrival_time == 12.5
    assert rb.arrival_time == 0.0
    assert ra.output_ids == rb.output_ids
    assert len(ra.output_ids) == 6
