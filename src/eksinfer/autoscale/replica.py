"""One simulated replica in virtual time: the engine core of `eksinfer sim`, stepped by event-driven
macro-steps.

Stepping every decode step of every replica of a day is ~10^8 steps, too slow in Python. But while a replica
only decodes (every running request is past its prefill, nothing waiting can be admitted, nobody finishes)
the batch is fixed and each step's modelled time grows linearly with the context (one token per request per
step):

    duration(m) = t1 + (m - 1) x delta          t1 = step_time_s(B seqs, C tokens of context),
    end(m)      = T0 + m x t1 + delta x m (m - 1) / 2    delta = step_time_s(B, C + B) - t1

so a run of k steps is advanced in one go: the end of step m, and how many steps end before a time t (a
quadratic), are closed forms. A run ends at the first step where a request finishes, or where the block pool
would run out (so preemption happens in an ordinary step), or is cut short by an arrival (the step in flight
completes, then the scheduler sees the newcomer, as in vLLM). Block allocations inside a run are replayed in
the order single steps make them (step by step, running order), grouped by the step at which each request
crosses a block boundary, so the pool (free-queue order, evictions, cached blocks) ends in the same state.
`sync(t)` brings a run's state to time t (allocations of the step in flight, tokens of finished steps) before
anyone reads the pool: the router and the metrics then see exactly what single steps would show.
`macro=False` steps one at a time through the same core (the reference the tests compare against).

Prompts have no token ids: block digests are synthetic (`SyntheticHasher`), shared within a prefix group.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from eksinfer.kvcache.hashing import BlockDigest, ExtraKeys
from eksinfer.sim.core import CoreConfig, EngineCore
from eksinfer.sim.scheduler import SimRequest, Status, StepPlan

if TYPE_CHECKING:
    from collections.abc import Sequence

    from eksinfer.perf import EnginePerf


class SyntheticHasher:
    """Block digests without tokens: block i of group g's shared prefix is `g<g>:<i>`.

    A request's own blocks get no digest, so they are never entered into the prefix cache: no other request
    can hit them, and hashing and caching some 80 blocks per request would double the simulation's time. The
    one difference from the engine: a request preempted and re-admitted recomputes its own prompt blocks
    where vLLM might still find them cached.
    """

    __slots__ = ("digests",)

    def __init__(self, prefix_digests: list[BlockDigest]) -> None:
        self.digests = prefix_digests

    def extra_keys(self, block_index: int) -> ExtraKeys:
        return None

    def update(self, token_ids: Sequence[int]) -> None:
        return None


def group_digests(group: int, blocks: int) -> list[BlockDigest]:
    return [BlockDigest(b"g%d:%d" % (group, i)) for i in range(blocks)]


@dataclass(slots=True)
class _Run:
    """A run of decode steps with a fixed batch; step 1 starts at `start_s` and was scheduled by the core."""

    reqs: list[SimRequest]
    base: list[int]  # num_computed_tokens of each request before step 1
    start_s: float
    t1: float
    delta: float
    context0: int  # decode_context_tokens of step 1
    last: int  # the step at which the run ends (completed through the core)
    by_residue: dict[int, list[int]] = field(default_factory=dict)  # (1 - base) % bs -> request indices
    uncached: list[int] = field(default_factory=list)  # requests with hashed blocks not yet cached
    allocated: int = 1  # steps whose allocations are applied
    counted: int = 0  # steps whose busy time the core counted (step 1 when the scheduler planned it)
    completed: int = 0  # steps whose tokens are applied

    def end(self, m: int) -> float:
        return self.start_s + m * self.t1 + self.delta * m * (m - 1) / 2

    def completed_by(self, t: float) -> int:
        """Steps of the run that end at or before t."""
        x = t - self.start_s
        if x < self.t1:
            return 0
        a, b = self.delta / 2, self.t1 - self.delta / 2
        m = int(x / b) if a <= 0 else int((-b + math.sqrt(b * b + 4 * a * x)) / (2 * a))
        while m > 0 and self.end(m) > t:
            m -= 1
        while self.end(m + 1) <= t:
            m += 1
        return m


class Replica:
    """A simulated engine replica; `next_event_s` is when its step (or run) in flight ends."""

    def __init__(
        self,
        rid: int,
        config: CoreConfig,
        perf: EnginePerf,
        *,
        macro: bool = True,
        on_token: Callable[[Replica, SimRequest, float], None] | None = None,
    ) -> None:
        self.rid = rid
        self.macro = macro
        self.now = 0.0
        self.core = EngineCore(config, perf=perf, sample_space=(0,), clock=lambda: self.now, observer=self)
        self.pool = self.core.pool
        self.macro = macro and not self.pool.hybrid  # macro-runs grow one KV-cache group; step hybrids
        self.scheduler = self.core.scheduler
        self.block_size = config.block_size
        self._on_token = on_token
        self._plan: StepPlan | None = None  # the single step in flight
        self._run: _Run | None = None
        self.next_event_s = math.inf
        self.num_runs = 0

    # --- CoreObserver ----------------------------------------------------------------------------------

    def on_schedule(self, core: EngineCore, plan: StepPlan) -> None:
        pass

    def on_token(self, req: SimRequest, now: float) -> None:
        # the first output token, or the last
        if self._on_token is not None and (
            len(req.token_ids) - req.num_prompt_tokens == 1 or req.finish_reason is not None
        ):
            self._on_token(self, req, now)

    def on_step(self, emitted: Sequence[SimRequest], now: float) -> None:
        pass

    # --- driving ---------------------------------------------------------------------------------------

    def add(
        self, rid: int, input_tokens: int, output_tokens: int, prefix: list[BlockDigest], now: float
    ) -> SimRequest:
        """A request arrives at `now` with the digests of its shared prefix blocks; it is scheduled when the
        step in flight ends."""
        self.sync(now)
        req = self.core.add_request(
            [0] * input_tokens,
            max_tokens=output_tokens,
            ignore_eos=True,
            hasher=SyntheticHasher(prefix),
            arrival_time=now,
            request_id=str(rid),
        )
        run = self._run
        if run is not None:  # the step in flight completes, then the scheduler sees the newcomer
            run.last = min(run.last, run.allocated)
            self.next_event_s = run.end(run.last)
        elif self._plan is None:
            self._start(now)
        return req

    def has_work(self) -> bool:
        return self.core.has_work()

    @property
    def in_run(self) -> bool:
        """A macro-run is in flight: the pool may lag behind `now` until `sync`."""
        return self._run is not None

    def step_end(self) -> None:
        """Complete the step (or run) ending at `next_event_s`, and start the next one."""
        now = self.next_event_s
        self.now = now
        run = self._run
        if run is not None:
            self.sync(now)
            m = run.last
            plan = StepPlan(
                scheduled=[(r, 1) for r in run.reqs],
                decode_seqs=len(run.reqs),
                decode_context_tokens=run.context0 + (m - 1) * len(run.reqs),
            )
            # the busy time of the run's steps, in one closed form (so it does not depend on how often the
            # run was synced): steps counted+1..m, step 1 being counted by the core when it scheduled it
            c, n = run.counted, m - run.counted
            self.core.simulated_s += n * run.t1 + run.delta * ((c + m - 1) * n / 2)
            self._run = None
            self.core.complete_step(plan, now)
        elif self._plan is not None:
            plan, self._plan = self._plan, None
            self.core.complete_step(plan, now)
        self._start(now)

    def _start(self, now: float) -> None:
        self.next_event_s = math.inf
        if not self.core.has_work():
            return
        if self.macro and self._direct_run(now):
            return
        plan = self.core.schedule(now)
        if not plan.scheduled:
            return  # nothing fits until something finishes: cannot happen without aborts here
        step_s = self.core.step_time_s(plan)
        if self.macro and self._try_run(plan, now, step_s):
            return
        self._plan = plan
        self.next_event_s = now + step_s

    def _try_run(self, plan: StepPlan, now: float, step_s: float) -> bool:
        sched = self.scheduler
        if plan.prefill_tokens or plan.preempted or len(plan.scheduled) != len(sched.running):
            return False
        reqs = [r for r, _ in plan.scheduled]
        max_len = sched.max_model_len
        # a request gets its token at step m and stops once out >= max_tokens or tokens >= max_model_len
        last = min(max(1, min(r.max_tokens - r.num_output_tokens, max_len - r.num_tokens)) for r in reqs)
        if last < 2:
            return False
        base = [r.num_computed_tokens for r in reqs]
        last = self._pool_limit(reqs, base, last)
        if last < 2:
            return False
        b = len(reqs)
        delta = (
            self.core.perf.step_time_s(
                prefill_tokens=0,
                prefill_attention_pairs=0,
                decode_seqs=b,
                decode_context_tokens=plan.decode_context_tokens + b,
            )
            - step_s
        )
        run = _Run(reqs, base, now, step_s, delta, plan.decode_context_tokens, last, counted=1)
        self._index(run)
        self._run = run
        self.num_runs += 1
        self.next_event_s = run.end(last)
        return True

    def _direct_run(self, now: float) -> bool:
        """Start a run without asking the scheduler, when its answer is known: nothing waits and every
        running request decodes, so the step is one token each (the scheduler's allocations for it are
        replayed by the run, its cache calls have nothing to add: a fleet request's digests are its prompt
        prefix, cached by its last prefill chunk)."""
        sched = self.scheduler
        reqs = sched.running
        b = len(reqs)
        if sched.waiting or not b or b > sched.max_num_batched_tokens:
            return False
        max_len = sched.max_model_len
        last = 1 << 62
        base: list[int] = []
        for r in reqs:  # once per run for every request: properties spelt out
            c = r.num_computed_tokens
            n = len(r.token_ids)
            # one token to compute, and not the last one of a prompt (that would be a prefill step)
            if n - c != 1 or c < r.num_prompt_tokens:
                return False
            left = min(r.max_tokens - n + r.num_prompt_tokens, max_len - n)
            if left < last:
                last = left
            base.append(c)
        if last < 2:  # a request stops after step max(1, left)
            return False
        last = self._pool_limit(reqs, base, last, start=1)
        if last < 2:
            return False
        context0 = sum(base) + b
        perf = self.core.perf
        t1 = perf.step_time_s(
            prefill_tokens=0, prefill_attention_pairs=0, decode_seqs=b, decode_context_tokens=context0
        )
        t2 = perf.step_time_s(
            prefill_tokens=0, prefill_attention_pairs=0, decode_seqs=b, decode_context_tokens=context0 + b
        )
        run = _Run(list(reqs), base, now, t1, t2 - t1, context0, last, allocated=0)
        self._index(run)
        self._allocate(run, 1)  # step 1 has started: its blocks are taken now, as schedule() would
        self._run = run
        self.num_runs += 1
        self.next_event_s = run.end(last)
        return True

    def _index(self, run: _Run) -> None:
        """Group the run's requests by the step residue at which they cross a block boundary, and note the
        ones whose hashed blocks are not all cached yet (the run's cache calls)."""
        bs = self.block_size
        groups = run.by_residue
        for j, c in enumerate(run.base):
            key = (1 - c) % bs
            js = groups.get(key)
            if js is None:
                groups[key] = [j]
            else:
                js.append(j)
        run.uncached = [j for j, r in enumerate(run.reqs) if r.table.num_cached < len(r.hasher.digests)]

    def _pool_limit(self, reqs: list[SimRequest], base: list[int], last: int, start: int = 2) -> int:
        """The last step whose allocations fit in the free blocks, counting from step `start` (the steps
        before it have their blocks); `start - 1` when even step `start` does not fit."""
        free = self.pool.num_free_blocks
        bs = self.block_size
        if len(reqs) * ((last - start) // bs + 1) <= free:
            return last
        steps: list[int] = []
        for c in base:
            first = start + ((1 - c - start) % bs)  # first m >= start with (c + m - 1) % bs == 0
            steps.extend(range(first, last + 1, bs))
        if len(steps) <= free:
            return last
        steps.sort()
        return steps[free] - 1

    def sync(self, t: float) -> None:
        """Apply what a run has done by time t: tokens of the steps that ended, allocations of the one in
        flight (single steps make them when the step is scheduled)."""
        self.now = max(self.now, t)
        run = self._run
        if run is None:
            return
        done = min(run.completed_by(t), run.last - 1)
        if done > run.completed:
            self._complete(run, done)
        started = min(done + 1, run.last)
        if started > run.allocated:
            self._allocate(run, started)

    def _complete(self, run: _Run, upto: int) -> None:
        n = upto - run.completed
        end = run.end(upto)
        zeros = [0] * n
        for r in run.reqs:
            r.num_computed_tokens += n
            r.token_ids.extend(zeros)
            r.last_token_time = end
        self.core.num_steps += n
        run.completed = upto

    def _allocate(self, run: _Run, upto: int) -> None:
        bs, reqs, base = self.block_size, run.reqs, run.base
        groups = run.by_residue
        append = self.pool.append_block  # _pool_limit checked that the run's blocks fit
        if len(groups) * 4 < upto - run.allocated:
            events = sorted(
                (m, j)
                for residue, js in groups.items()
                for j in js
                for m in range(run.allocated + 1 + (residue - run.allocated - 1) % bs, upto + 1, bs)
            )
            for _, j in events:
                append(reqs[j].table)  # step m needs block (base + m - 1) // bs: one more than before
        else:
            for m in range(run.allocated + 1, upto + 1):
                js = groups.get(m % bs)
                if js:
                    for j in js:
                        append(reqs[j].table)
        cache = self.scheduler.cache_blocks
        for j in run.uncached:
            # only blocks with a digest are cached; a fleet request's are its shared prefix, cached when it
            # was admitted, so decode steps rarely have any to add (`uncached` is almost always empty)
            r = reqs[j]
            if r.status is Status.RUNNING:
                cache(r, base[j] + upto)
        run.allocated = upto
