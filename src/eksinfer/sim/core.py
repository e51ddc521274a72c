"""The synchronous engine core: block pool + scheduler + step time + sampling, on a clock the driver injects.

Two drivers share it, so a simulated replica behaves the same wherever it runs:
- `sim.engine.Engine` steps it on the asyncio loop, sleeping each step's modelled time (scaled), and wakes
  HTTP handlers (`eksinfer sim`, `eksinfer up`);
- `autoscale.replica.Replica` steps it in virtual time inside the fleet simulation (`eksinfer autoscale`).

One step is `plan = schedule(now)`, `step_time_s(plan)` seconds of modelled GPU time, then
`complete_step(plan, now + that)`. The core never sleeps, never reads a wall clock except through `clock`,
and never does I/O; what a driver reports (Prometheus metrics, KV events, SSE chunks) it learns through a
`CoreObserver`.

Generated tokens are deterministic: request r's generator is seeded by (`seed`, the request's `seed`, a
CRC-32 of its prompt ids). With `natural_output_tokens = N > 0` the simulated model emits EOS as token number
U[N/2, 3N/2] (same seeding) unless `ignore_eos`; `max_tokens` and `max_model_len` cap the length as in vLLM.
"""

from __future__ import annotations

import array
import itertools
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from eksinfer.errors import UsageError
from eksinfer.kvcache.hashing import DEFAULT_HASH_SEED, HashAlgo
from eksinfer.sim.blocks import BlockPool, BlockTable
from eksinfer.sim.hybrid import HybridBlockPool, group_kinds
from eksinfer.sim.scheduler import HasherLike, Scheduler, SimRequest, StepPlan

if TYPE_CHECKING:
    from eksinfer.perf import EnginePerf


class CoreObserver(Protocol):
    """What a driver wants to hear about; every method is called synchronously inside the step."""

    def on_schedule(self, core: EngineCore, plan: StepPlan) -> None:
        """After scheduling: `core.scheduler.stats` holds the step's prefix and preemption counts."""

    def on_token(self, req: SimRequest, now: float) -> None:
        """`req` got a token at `now`; `req.last_token_time` is still the previous token's time."""

    def on_step(self, emitted: Sequence[SimRequest], now: float) -> None:
        """The step is complete; `emitted` got one token each."""


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """The numbers one engine core runs with (vLLM's flags, resolved)."""

    num_gpu_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    hash_seed: str = DEFAULT_HASH_SEED
    hash_algo: HashAlgo = "sha256_cbor"
    seed: int = 0
    natural_output_tokens: int = 256
    eos_token_id: int = -1
    emit_events: bool = False

    @classmethod
    def sized_by(cls, perf: EnginePerf) -> CoreConfig:
        """The core of an engine sized as the performance model sizes it, for virtual-time studies: every
        request runs to its `max_tokens` (no natural end), so the work is the workload's."""
        return cls(
            num_gpu_blocks=perf.num_gpu_blocks,
            block_size=perf.block_size,
            max_num_seqs=perf.max_num_seqs,
            max_num_batched_tokens=perf.max_num_batched_tokens,
            max_model_len=perf.max_model_len,
            natural_output_tokens=0,
        )


def make_pool(config: CoreConfig, perf: EnginePerf) -> BlockPool:
    """The KV block pool vLLM would run for the model: one KV-cache group, or, for a model with
    sliding-window layers, its full and sliding groups sharing the pool (sim.hybrid)."""
    layout = perf.kv_layout
    if not layout.sliding_groups:
        return BlockPool(
            config.num_gpu_blocks,
            config.block_size,
            enable_caching=config.enable_prefix_caching,
            emit_events=config.emit_events,
        )
    return HybridBlockPool(
        config.num_gpu_blocks,
        config.block_size,
        kinds=group_kinds(layout.full_groups, layout.sliding_groups, layout.sliding_first),
        sliding_window=layout.sliding_window,
        max_model_len=config.max_model_len,
        in_flight_tokens=perf.in_flight_tokens(config.max_num_batched_tokens),
        enable_caching=config.enable_prefix_caching,
        emit_events=config.emit_events,
    )


class EngineCore:
    """One engine's state and its step function; `clock()` stamps arrivals (the driver's time base)."""

    def __init__(
        self,
        config: CoreConfig,
        *,
        perf: EnginePerf,
        sample_space: Sequence[int],
        clock: Callable[[], float],
        observer: CoreObserver | None = None,
        id_prefix: str = "",
    ) -> None:
        self.config = config
        self.perf = perf
        self.clock = clock
        self.observer = observer
        self.pool = make_pool(config, perf)
        self.scheduler = Scheduler(
            self.pool,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_model_len=config.max_model_len,
            enable_chunked_prefill=config.enable_chunked_prefill,
        )
        self._choices = list(sample_space)
        self._ids = itertools.count()
        self._id_prefix = id_prefix
        self.num_steps = 0
        self.simulated_s = 0.0  # sum of modelled step times: the simulated GPU's busy time

    # --- requests -----------------------------------------------------------------------------------------

    def add_request(
        self,
        prompt_ids: list[int],
        *,
        max_tokens: int,
        ignore_eos: bool = False,
        lora_name: str | None = None,
        lora_path: str | None = None,
        lora_id: int | None = None,
        cache_salt: str | None = None,
        seed: int | None = None,
        on_tokens: Callable[[SimRequest], None] | None = None,
        script: list[int] | None = None,
        hasher: HasherLike | None = None,
        arrival_time: float | None = None,
        request_id: str | None = None,
        kv_params: dict[str, Any] | None = None,
    ) -> SimRequest:
        """Queue a request (already validated against max_model_len by the caller). With `script` the model
        writes exactly those tokens and then EOS (guided decoding: tool calls, JSON output). A `hasher`
        replaces the sha256 block hasher (the fleet simulation's synthetic prompts). `kv_params` are the
        request's kv_transfer_params, for the scheduler's KV connector (P/D, sim/pd)."""
        cfg = self.config
        if self.pool.blocks_to_allocate(BlockTable(), len(prompt_ids) + 1, (), admission=True) > (
            self.pool.num_gpu_blocks - 1
        ):  # it would wait for ever: no finished request frees enough
            raise UsageError(
                f"the prompt needs more KV blocks than the engine has ({self.pool.num_gpu_blocks - 1})",
                field="prompt",
            )
        natural = cfg.natural_output_tokens
        rng: random.Random | None = None
        natural_len = 0
        if hasher is None:  # a fleet request (synthetic prompt, ignore_eos) needs no generator
            key = (cfg.seed * 1_000_003 + (seed or 0)) ^ zlib.crc32(array.array("q", prompt_ids).tobytes())
            rng = random.Random(key)
            natural_len = rng.randint(max(natural // 2, 1), max(natural * 3 // 2, 1)) if natural else 0
        req = SimRequest(
            request_id or f"{self._id_prefix}{next(self._ids)}",
            prompt_ids,
            max_tokens=max_tokens,
            block_size=cfg.block_size,
            hash_seed=cfg.hash_seed,
            hash_algo=cfg.hash_algo,
            arrival_time=self.clock() if arrival_time is None else arrival_time,
            ignore_eos=ignore_eos,
            natural_len=natural_len,
            eos_token_id=cfg.eos_token_id,
            lora_name=lora_name,
            lora_path=lora_path,
            lora_id=lora_id,
            cache_salt=cache_salt,
            on_tokens=on_tokens,
            hasher=hasher,
        )
        req.rng_state = rng
        req.script = script
        req.kv_params = kv_params
        self.scheduler.add(req)
        return req

    def abort(self, req: SimRequest) -> bool:
        return self.scheduler.abort(req)

    def fail_all(self) -> list[SimRequest]:
        """Abort everything queued or running with reason "error"; returns them so the driver can tell."""
        pending = [*self.scheduler.running, *self.scheduler.waiting, *self.scheduler.loading]
        for req in pending:
            self.scheduler.abort(req)
            req.finish_reason = "error"
        return pending

    def sample(self, req: SimRequest) -> int:
        if req.script is not None:
            i = req.num_output_tokens
            return req.script[i] if i < len(req.script) else req.eos_token_id
        if req.natural_len and req.num_output_tokens + 1 >= req.natural_len and req.eos_token_id >= 0:
            return req.eos_token_id
        rng: random.Random | None = req.rng_state
        if rng is None:  # fleet requests (ignore_eos, no text): any token will do
            return self._choices[0]
        choices = self._choices
        return choices[rng.randrange(len(choices))]

    # --- one step -----------------------------------------------------------------------------------------

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def schedule(self, now: float) -> StepPlan:
        """Plan the next step; requests scheduled for the first time are stamped `now`."""
        plan = self.scheduler.schedule()
        for req, _ in plan.scheduled:
            if not req.first_scheduled_time:
                req.first_scheduled_time = now
        if self.observer is not None:
            self.observer.on_schedule(self, plan)
        return plan

    def step_time_s(self, plan: StepPlan) -> float:
        """Modelled GPU seconds of the planned step; counted as busy time."""
        step_s = self.perf.step_time_s(
            prefill_tokens=plan.prefill_tokens,
            prefill_attention_pairs=plan.prefill_attention_pairs,
            decode_seqs=plan.decode_seqs,
            decode_context_tokens=plan.decode_context_tokens,
        )
        self.simulated_s += step_s
        return step_s

    def complete_step(self, plan: StepPlan, now: float) -> list[SimRequest]:
        """Apply a finished step at `now`: sample one token for every request whose tokens are all computed,
        stamp token times, finish requests. Returns the requests that got a token."""
        self.num_steps += 1
        emitted = self.scheduler.update(plan, self.sample)
        obs = self.observer
        on_token = obs.on_token if obs is not None else None
        for req in emitted:
            if len(req.token_ids) - req.num_prompt_tokens == 1:  # the first output token
                req.first_token_time = now
            if on_token is not None:
                on_token(req, now)
            req.last_token_time = now
        if obs is not None:
            obs.on_step(emitted, now)
        return emitted

    def step(self, now: float) -> tuple[StepPlan, float, list[SimRequest]]:
        """Schedule, time and complete one step starting at `now` (a driver in virtual time); an empty plan
        (nothing fits) takes no time and emits nothing."""
        plan = self.schedule(now)
        if not plan.scheduled:
            return plan, 0.0, []
        step_s = self.step_time_s(plan)
        return plan, step_s, self.complete_step(plan, now + step_s)
