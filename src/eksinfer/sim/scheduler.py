"""vLLM v1's scheduler, reduced to what decides timing and cache state (vllm/v1/core/sched/scheduler.py).

Each step has a token budget of `max_num_batched_tokens`:
1. RUNNING requests in order each get `num_tokens - num_computed_tokens` tokens (1 when decoding, the rest
   of the prompt when prefilling; chunked prefill caps it at the remaining budget). When the blocks do not
   fit, the last running request is preempted (recompute: its blocks are freed, `num_computed_tokens = 0`,
   it goes back to the head of the waiting queue) until they do, or the request preempts itself.
2. Only if nothing was preempted, WAITING requests are admitted first-come-first-served while fewer than
   `max_num_seqs` run: the prefix cache supplies the longest run of cached full blocks, capped at
   `(num_tokens - 1) // block_size` blocks so at least one token is computed; the whole sequence must fit
   in the free blocks (vLLM 0.32 `scheduler_reserve_full_isl`), the first chunk is allocated. Each
   admission counts a prefix-cache query of `num_tokens` tokens with `hit_blocks * block_size` hit tokens
   (re-admissions after preemption are counted apart, as vLLM's PrefixCacheStats does). Without chunked
   prefill a prompt larger than the remaining budget waits. Admission stops at the first request that
   does not fit.
3. After the step, every request whose tokens are all computed samples one token; a request stops at
   `max_tokens`, at EOS (unless `ignore_eos`), or at `max_model_len` tokens.

With a KV connector (P/D disaggregation, sim/pd): at admission the connector may claim the prompt tokens the
local cache lacks as remote (vLLM's `get_num_new_matched_tokens` -> load asynchronously). Such a request gets
blocks for the whole prompt, computes nothing and parks in WAITING_FOR_REMOTE_KVS (neither running nor
waiting) until `finish_load`; then it rejoins the head of the waiting queue with the prompt computed but its
last token, which it recomputes to sample the first output token (vLLM `_update_waiting_for_remote_kv`).
A finishing request's blocks go to the connector instead of the free queue when it says so (a prefill
whose blocks a decode engine will pull).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from eksinfer.kvcache.hashing import BlockDigest, BlockHasher, ExtraKeys, HashAlgo
from eksinfer.sim.blocks import Block, BlockPool, BlockTable


class HasherLike(Protocol):
    """What the scheduler needs of a request's block hasher: the digests of its full blocks so far."""

    @property
    def digests(self) -> list[BlockDigest]: ...

    def extra_keys(self, block_index: int) -> ExtraKeys: ...

    def update(self, token_ids: Sequence[int]) -> object: ...


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    WAITING_FOR_REMOTE_KVS = "waiting_for_remote_kvs"
    FINISHED = "finished"


class SimRequest:
    """One request inside the engine: its tokens, progress, blocks and timestamps (monotonic seconds)."""

    __slots__ = (
        "arrival_time",
        "eos_token_id",
        "finish_reason",
        "first_scheduled_time",
        "first_token_time",
        "hasher",
        "ignore_eos",
        "kv_out",
        "kv_params",
        "last_token_time",
        "lora_id",
        "lora_name",
        "max_tokens",
        "natural_len",
        "num_cached_tokens",
        "num_computed_tokens",
        "num_external_tokens",
        "num_preemptions",
        "num_prompt_tokens",
        "on_tokens",
        "request_id",
        "rng_state",
        "script",
        "status",
        "table",
        "token_ids",
    )

    def __init__(
        self,
        request_id: str,
        prompt_ids: list[int],
        *,
        max_tokens: int,
        block_size: int,
        hash_seed: str,
        arrival_time: float,
        hash_algo: HashAlgo = "sha256_cbor",
        ignore_eos: bool = False,
        natural_len: int = 0,
        eos_token_id: int = -1,
        lora_name: str | None = None,
        lora_path: str | None = None,
        lora_id: int | None = None,
        cache_salt: str | None = None,
        on_tokens: Callable[[SimRequest], None] | None = None,
        hasher: HasherLike | None = None,
    ) -> None:
        self.request_id = request_id
        self.token_ids = list(prompt_ids)
        self.num_prompt_tokens = len(prompt_ids)
        self.max_tokens = max_tokens
        self.ignore_eos = ignore_eos
        self.natural_len = natural_len
        self.eos_token_id = eos_token_id
        self.lora_name = lora_name
        self.lora_id = lora_id
        self.arrival_time = arrival_time
        self.status = Status.WAITING
        self.num_computed_tokens = 0
        self.num_cached_tokens = -1  # local + external, set at first admission
        self.num_external_tokens = 0  # of those, pulled from a remote prefill engine
        self.kv_params: dict[str, Any] | None = None  # kv_transfer_params the client sent
        self.kv_out: dict[str, Any] | None = None  # kv_transfer_params the response carries
        self.num_preemptions = 0
        self.table = BlockTable()
        self.hasher: HasherLike = hasher or BlockHasher(
            block_size,
            seed=hash_seed,
            algo=hash_algo,
            lora_name=lora_name,
            lora_path=lora_path,
            cache_salt=cache_salt,
        )
        self.hasher.update(self.token_ids)
        self.finish_reason: str | None = None
        self.first_scheduled_time = 0.0
        self.first_token_time = 0.0
        self.last_token_time = 0.0
        self.on_tokens = on_tokens
        self.rng_state: Any = None
        self.script: list[int] | None = None  # tokens the model must write, then EOS (guided output)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]


@dataclass(slots=True)
class StepPlan:
    """What one step computes, and the batch shape the performance model prices."""

    scheduled: list[tuple[SimRequest, int]] = field(default_factory=list)
    preempted: list[SimRequest] = field(default_factory=list)
    prefill_tokens: int = 0
    prefill_attention_pairs: int = 0
    decode_seqs: int = 0
    decode_context_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return self.prefill_tokens + self.decode_seqs


@dataclass(slots=True)
class SchedulerStats:
    """Counters since the engine last drained them (vLLM's SchedulerStats / PrefixCacheStats)."""

    prefix_queries: int = 0
    prefix_hits: int = 0
    external_queries: int = 0  # vLLM's connector PrefixCacheStats: tokens not hit locally at admission
    external_hits: int = 0  # of those, the ones a remote engine supplies
    preempted_queries: int = 0
    preempted_hits: int = 0
    preemptions: int = 0


Sampler = Callable[[SimRequest], int]


class KvConnector(Protocol):
    """What the scheduler asks a KV connector (vLLM's KVConnectorBase_V1 scheduler side, reduced)."""

    def remote_tokens(self, req: SimRequest, num_local_computed: int) -> int:
        """Prompt tokens to load from a remote engine beyond the local hits (0: none)."""
        ...

    def start_load(self, req: SimRequest, num_local_blocks: int) -> None:
        """Blocks are allocated: begin pulling; the engine calls `Scheduler.finish_load` when done."""
        ...

    def request_finished(self, req: SimRequest) -> bool:
        """A request finished normally; True when the connector keeps (and will free) its blocks."""
        ...


class Scheduler:
    def __init__(
        self,
        pool: BlockPool,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        enable_chunked_prefill: bool = True,
    ) -> None:
        self.pool = pool
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.enable_chunked_prefill = enable_chunked_prefill
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.loading: list[SimRequest] = []  # WAITING_FOR_REMOTE_KVS
        self.stats = SchedulerStats()
        self.connector: KvConnector | None = None

    def add(self, request: SimRequest) -> None:
        self.waiting.append(request)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def cache_blocks(self, req: SimRequest, num_tokens: int) -> None:
        """Cache the request's blocks that are full within its first `num_tokens` tokens (vLLM caches a block
        as soon as its tokens are scheduled); the fleet simulation replays this for runs of decode steps."""
        if req.table.num_cached >= len(req.hasher.digests):
            return  # every hashed block is cached already (most decode steps)
        self.pool.cache_full_blocks(
            req.table,
            req.hasher.digests,
            req.token_ids,
            min(num_tokens, req.num_tokens),
            lora_id=req.lora_id,
            lora_name=req.lora_name,
            extra_keys=req.hasher.extra_keys,
            num_prompt_tokens=req.num_prompt_tokens,
        )

    def _preempt(self, req: SimRequest) -> None:
        self.pool.free(req.table)
        req.status = Status.PREEMPTED
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        self.stats.preemptions += 1
        self.waiting.appendleft(req)

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        budget = self._schedule_running(plan, self.max_num_batched_tokens)
        if not plan.preempted:
            self._schedule_waiting(plan, budget)
        decode_seqs = decode_context = prefill = pairs = 0
        for req, n in plan.scheduled:
            computed = req.num_computed_tokens
            if n == 1 and computed >= req.num_prompt_tokens:
                decode_seqs += 1
                decode_context += computed + 1
            else:
                prefill += n
                pairs += n * (computed + n)
        plan.decode_seqs, plan.decode_context_tokens = decode_seqs, decode_context
        plan.prefill_tokens, plan.prefill_attention_pairs = prefill, pairs
        return plan

    def _schedule_running(self, plan: StepPlan, budget: int) -> int:
        i = 0
        running = self.running
        block_size = self.pool.block_size
        hybrid = self.pool.hybrid
        scheduled = plan.scheduled
        while i < len(running) and budget > 0:
            req = running[i]
            computed = req.num_computed_tokens
            n = min(len(req.token_ids) - computed, budget)
            if n <= 0:
                i += 1
                continue
            fits = True
            tokens = computed + n
            if hybrid:  # sliding-window groups free what left the window before anything is allocated
                self.pool.remove_skipped(req.table, computed)
            # the blocks held may cover the step already (a decode step does 15 times in 16 at block size 16)
            while tokens > len(req.table.blocks) * block_size and not self.pool.allocate(
                req.table, tokens, ()
            ):
                victim = running.pop()
                self._preempt(victim)
                plan.preempted.append(victim)
                if victim is req:
                    fits = False
                    break
            if not fits:
                break
            if req.table.num_cached < len(req.hasher.digests):  # else cache_blocks has nothing to do
                self.cache_blocks(req, tokens)
            scheduled.append((req, n))
            budget -= n
            i += 1
        return budget

    def _schedule_waiting(self, plan: StepPlan, budget: int) -> None:
        pool, bs = self.pool, self.pool.block_size
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            resumed = bool(req.table.blocks)  # back from a remote KV load with its blocks allocated
            if resumed:
                hits: list[Block] = []
                computed = req.num_computed_tokens
            else:
                hits = pool.longest_hit(req.hasher.digests, (req.num_tokens - 1) // bs)
                computed = len(hits) * bs
                remote = self.connector.remote_tokens(req, computed) if self.connector is not None else 0
                if remote > 0:
                    if not self._admit_remote(req, hits, computed, remote):
                        break
                    continue
            n = req.num_tokens - computed
            if not self.enable_chunked_prefill and n > budget:
                break
            n = min(n, budget)
            # vLLM 0.32 scheduler_reserve_full_isl (default on): admit only if the whole sequence fits
            full = min(req.num_tokens, self.max_model_len)
            if pool.blocks_to_allocate(req.table, full, hits, admission=True) > pool.num_free_blocks:
                break
            if not pool.allocate(req.table, computed + n, hits):
                break
            if self.connector is not None and not resumed and not req.num_preemptions:
                self.stats.external_queries += (
                    req.num_tokens - computed
                )  # vLLM: every lookup with a connector
            if pool.enable_caching and not resumed:  # recorded at admission: unscheduled lookups do not count
                if req.num_preemptions:
                    self.stats.preempted_queries += req.num_tokens
                    self.stats.preempted_hits += computed
                else:
                    self.stats.prefix_queries += req.num_tokens
                    self.stats.prefix_hits += computed
            self.waiting.popleft()
            req.num_computed_tokens = computed
            if req.num_cached_tokens < 0:
                req.num_cached_tokens = computed
            req.status = Status.RUNNING
            self.running.append(req)
            self.cache_blocks(req, computed + n)
            plan.scheduled.append((req, n))
            budget -= n

    def _admit_remote(self, req: SimRequest, hits: list[Block], computed: int, remote: int) -> bool:
        """Allocate the whole prompt and park the request until its remote KV arrives; False if short."""
        pool = self.pool
        full = min(req.num_tokens, self.max_model_len)
        if pool.blocks_to_allocate(req.table, full, hits) > pool.num_free_blocks:
            return False
        if not pool.allocate(req.table, computed + remote, hits):
            return False
        stats = self.stats
        if pool.enable_caching:
            stats.prefix_queries += req.num_tokens
            stats.prefix_hits += computed
        stats.external_queries += req.num_tokens - computed
        stats.external_hits += remote
        self.waiting.popleft()
        req.num_computed_tokens = computed + remote
        req.num_cached_tokens = computed + remote
        req.num_external_tokens = remote
        req.status = Status.WAITING_FOR_REMOTE_KVS
        self.loading.append(req)
        assert self.connector is not None
        self.connector.start_load(req, len(hits))
        return True

    def finish_load(self, req: SimRequest, *, ok: bool) -> None:
        """The remote KV arrived (`ok`) or could not be read (the request recomputes what it lacks)."""
        if req.status is not Status.WAITING_FOR_REMOTE_KVS:
            return  # aborted meanwhile
        self.loading.remove(req)
        if ok:
            self.cache_blocks(req, req.num_computed_tokens)
        else:
            local = req.num_computed_tokens - req.num_external_tokens
            req.num_computed_tokens = req.num_cached_tokens = local
            req.num_external_tokens = 0
        if req.num_computed_tokens >= req.num_tokens:  # recompute the last token to sample the next one
            req.num_computed_tokens = req.num_tokens - 1
        req.status = Status.WAITING
        self.waiting.appendleft(req)

    def update(self, plan: StepPlan, sample: Sampler) -> list[SimRequest]:
        """Apply a finished step: advance progress, sample tokens, finish requests.

        Returns the requests that got a token; the finished ones among them have `finish_reason` set.
        """
        emitted: list[SimRequest] = []
        any_finished = False
        running = Status.RUNNING
        max_len = self.max_model_len
        # the hot loop of every simulated step (the fleet simulation runs millions): the num_tokens /
        # num_output_tokens properties are spelt out; a request stops at EOS unless ignore_eos, at max_tokens
        # output tokens, or at max_model_len tokens
        for req, n in plan.scheduled:
            if req.status is not running:
                continue  # aborted while the step ran
            computed = req.num_computed_tokens + n
            req.num_computed_tokens = computed
            tokens = req.token_ids
            if computed < len(tokens):
                continue  # a prefill chunk that is not the last
            token = sample(req)
            tokens.append(token)
            req.hasher.update(tokens)
            emitted.append(req)
            if not req.ignore_eos and token == req.eos_token_id:
                reason = "stop"
            elif len(tokens) - req.num_prompt_tokens >= req.max_tokens or len(tokens) >= max_len:
                reason = "length"
            else:
                continue
            req.finish_reason = reason
            req.status = Status.FINISHED
            if self.connector is None or not self.connector.request_finished(req):
                self.pool.free(req.table)
            any_finished = True
        if any_finished:
            self.running = [r for r in self.running if r.status is running]
        return emitted

    def _finish(self, req: SimRequest) -> None:
        req.status = Status.FINISHED
        if req in self.running:
            self.running.remove(req)
        self.pool.free(req.table)

    def abort(self, req: SimRequest) -> bool:
        """Drop a request wherever it is (client gone); False if it had already finished."""
        if req.status is Status.FINISHED:
            return False
        if req.status is Status.RUNNING:
            self._finish(req)
        elif req.status is Status.WAITING_FOR_REMOTE_KVS:
            self.loading.remove(req)
            self.pool.free(req.table)
            req.status = Status.FINISHED
        else:
            self.waiting.remove(req)
            self.pool.free(req.table)  # holds blocks when it came back from a remote KV load
            req.status = Status.FINISHED
        req.finish_reason = "abort"
        return True
