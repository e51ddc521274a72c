"""One simulated vLLM engine over HTTP: the engine core (`sim.core`) + metrics + KV-event publisher.

The step loop runs on the asyncio loop: the core schedules a batch, the engine publishes the KV events the
allocation produced, waits `step_time_s(batch) * time_scale` (+ the slow-token fault), then the core samples
one token for every request whose tokens are all computed and the engine wakes its HTTP handler. Waiting is
measured against an absolute timeline so short steps do not drift; at `time_scale = 0` a step only yields to
the loop. Scheduling, sampling and step times live in the core, which the fleet simulation drives too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from eksinfer.errors import UsageError
from eksinfer.sim.config import EngineSizing, SimOptions
from eksinfer.sim.core import CoreConfig, EngineCore
from eksinfer.sim.lora import LoraRegistry
from eksinfer.sim.metrics import EngineMetrics
from eksinfer.sim.publisher import EventPublisher
from eksinfer.sim.scheduler import SimRequest, StepPlan
from eksinfer.tokenize import BuiltinTokenizer, Tokenizer

if TYPE_CHECKING:
    from eksinfer.perf import EnginePerf
    from eksinfer.sim.pd.connector import NixlSim

log = logging.getLogger(__name__)
VLLM_VERSION = "0.32.0"
_FLAT_OUT_SLICE_S = 0.005  # at time scale 0, longest run of steps between two yields to the loop


class Engine:
    """A simulated engine; `start()` launches the step loop, `stop()` ends it and closes sockets."""

    def __init__(
        self,
        options: SimOptions,
        *,
        rank: int,
        tokenizer: Tokenizer,
        perf: EnginePerf,
        sizing: EngineSizing,
        topic: str = "",
    ) -> None:
        self.options = options
        self.rank = rank
        self.tokenizer = tokenizer
        self.perf = perf
        self.sizing = sizing
        self.model_name = options.model_names[0]
        self.loras = LoraRegistry(options.model_names, options.lora_adapters)
        events = options.kv_events
        self.core = EngineCore(
            CoreConfig(
                num_gpu_blocks=sizing.num_gpu_blocks,
                block_size=options.block_size,
                max_num_seqs=sizing.max_num_seqs,
                max_num_batched_tokens=sizing.max_num_batched_tokens,
                max_model_len=sizing.max_model_len,
                enable_prefix_caching=options.enable_prefix_caching,
                enable_chunked_prefill=options.enable_chunked_prefill,
                hash_seed=options.hash_seed,
                hash_algo=options.prefix_caching_hash_algo,
                seed=options.seed,
                natural_output_tokens=options.natural_output_tokens,
                eos_token_id=tokenizer.eos_token_id,
                emit_events=events.enabled,
            ),
            perf=perf,
            sample_space=self._sample_space(),
            clock=time.monotonic,
            observer=self,
            id_prefix=f"{rank}-",
        )
        self.pool = self.core.pool
        self.scheduler = self.core.scheduler
        self.publisher: EventPublisher | None = None
        if events.enabled:
            self.publisher = EventPublisher(
                events,
                rank=rank,
                topic=topic,
                encoding=options.kv_events_encoding,
                drop_rate=options.faults.events_drop_rate,
                close_after=options.faults.events_close_after,
                seed=options.seed,
            )
        self.metrics = EngineMetrics(
            model_name=self.model_name, engine=rank, cache_labels=self._cache_labels()
        )
        self._wake = asyncio.Event()
        self.nixl: NixlSim | None = None
        if options.kv_transfer is not None:
            if self.pool.hybrid:  # the simulated connector moves one KV-cache group's blocks
                raise UsageError(
                    f"P/D is not simulated for {options.model}: its sliding-window layers make several "
                    "KV-cache groups",
                    field="--kv-transfer-config",
                )
            self.nixl = self._connector()
        self.metrics.bind_gauges(
            running=lambda: float(len(self.scheduler.running)),
            waiting=lambda: float(len(self.scheduler.waiting)),
            kv_usage=self.pool.usage,
            deferred=None if self.nixl is None else lambda: float(len(self.scheduler.loading)),
        )
        if options.enable_lora or options.lora_modules:  # vLLM: only with a LoRA config
            self.metrics.add_lora_info(options.max_loras, self._lora_snapshot, time.time)
        self._task: asyncio.Task[None] | None = None
        self._computed_prompt = 0  # prompt tokens computed by the step being completed (first tokens)

    @property
    def num_steps(self) -> int:
        return self.core.num_steps

    @property
    def simulated_s(self) -> float:
        """Sum of modelled step times (unscaled): the simulated GPU's busy time."""
        return self.core.simulated_s

    def _connector(self) -> NixlSim:
        """The simulated NixlConnector (sim/pd), wired into the core's scheduler; P/D only. It does I/O (the
        side channel), so it belongs to this asyncio driver; the core only sees the scheduler hooks."""
        from eksinfer.sim.pd.config import SideChannel
        from eksinfer.sim.pd.connector import NixlSim
        from eksinfer.sim.pd.link import link_gbytes_per_s
        from eksinfer.sim.pd.metrics import NixlMetrics

        o = self.options
        assert o.kv_transfer is not None
        nixl = NixlSim(
            o.kv_transfer,
            pool=self.pool,
            block_size=o.block_size,
            tp_size=o.tensor_parallel_size,
            kv_bytes_per_token=self.perf.kv_bytes_per_token,
            num_layers=self.perf.num_layers,
            gbytes_per_s=link_gbytes_per_s(o.kv_link, o.gpu, o.tensor_parallel_size, o.kv_link_gbps),
            metrics=NixlMetrics(self.metrics, consumer=o.kv_transfer.kv_role != "kv_producer"),
            side_channel=SideChannel(o.nixl_side_channel_host, o.nixl_side_channel_port),
            time_scale=lambda: self.options.time_scale,
        )
        nixl.bind(on_loaded=self._kv_loaded, on_freed=lambda: self._wake.set())
        self.scheduler.connector = nixl
        nixl.scheduler = self.scheduler
        return nixl

    def _kv_loaded(self, req: SimRequest, ok: bool) -> None:
        """A pull ended: the request continues, recomputes (policy "recompute") or fails (vLLM's default)."""
        assert self.nixl is not None
        if ok or self.nixl.config.kv_load_failure_policy == "recompute":
            self.scheduler.finish_load(req, ok=ok)
        elif self.scheduler.abort(req):
            req.finish_reason = "error"
            self.metrics.success["error"].inc()
            if req.on_tokens is not None:
                req.on_tokens(req)
        self._wake.set()

    def _cache_labels(self) -> dict[str, str]:
        o = self.options
        return {
            "block_size": str(o.block_size),
            "cache_dtype": "auto",
            "enable_prefix_caching": str(o.enable_prefix_caching),
            "gpu_memory_utilization": str(o.gpu_memory_utilization),
            "num_cpu_blocks": "None",
            "num_gpu_blocks": str(self.sizing.num_gpu_blocks),
            "num_gpu_blocks_override": str(o.num_gpu_blocks),
            "prefix_caching_hash_algo": o.prefix_caching_hash_algo,
        }

    def _sample_space(self) -> list[int]:
        if isinstance(self.tokenizer, BuiltinTokenizer):
            return list(self.tokenizer.word_ids())
        vocab = self.tokenizer.vocab_size
        return list(range(vocab // 10, max(vocab * 9 // 10, vocab // 10 + 1)))

    def _lora_snapshot(self) -> tuple[list[str], list[str]]:
        running = sorted({r.lora_name for r in self.scheduler.running if r.lora_name})
        waiting = sorted({r.lora_name for r in self.scheduler.waiting if r.lora_name})
        return running, waiting

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.publisher is not None:
            self.publisher.start()
        if self.nixl is not None:
            await self.nixl.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"engine-{self.rank}")

    async def stop(self) -> None:
        """End the loop; requests still queued or running finish with reason "error" (handlers answer 500)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._fail_all()
        if self.nixl is not None:
            await self.nixl.stop()
        if self.publisher is not None:
            await self.publisher.close()

    def _fail_all(self) -> None:
        for req in self.core.fail_all():
            self.metrics.success["error"].inc()
            if req.on_tokens is not None:
                req.on_tokens(req)

    # --- requests -----------------------------------------------------------------------------------------

    def add_request(
        self,
        prompt_ids: list[int],
        *,
        max_tokens: int,
        ignore_eos: bool = False,
        lora_name: str | None = None,
        cache_salt: str | None = None,
        seed: int | None = None,
        on_tokens: Callable[[SimRequest], None] | None = None,
        script: list[int] | None = None,
        kv_transfer_params: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> SimRequest:
        """Queue a request (already validated against max_model_len by the server). With `script` the model
        writes exactly those tokens and then EOS (guided decoding: tool calls, JSON output).
        `kv_transfer_params` count only with --kv-transfer-config (vLLM ignores them without a connector)."""
        req = self.core.add_request(
            prompt_ids,
            max_tokens=max_tokens,
            ignore_eos=ignore_eos,
            lora_name=lora_name,
            lora_path=self.loras.path(lora_name) if lora_name else None,
            lora_id=self.loras.id(lora_name) if lora_name else None,
            cache_salt=cache_salt,
            seed=seed,
            on_tokens=on_tokens,
            script=script,
            request_id=request_id,
            kv_params=dict(kv_transfer_params) if self.nixl is not None and kv_transfer_params else None,
        )
        if self.nixl is not None:
            self.nixl.on_new_request(req)
        self._wake.set()
        return req

    def abort(self, req: SimRequest) -> None:
        if self.nixl is not None and req.finish_reason is None:
            self.nixl.on_abort(req)
        if self.scheduler.abort(req):
            self.metrics.success["abort"].inc()
            self._wake.set()

    # --- the step loop ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._steps()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not leave clients hanging: fail what is pending, keep serving
            log.exception("engine %d step loop failed; failing pending requests", self.rank)
            self._fail_all()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"engine-{self.rank}")

    async def _steps(self) -> None:
        loop = asyncio.get_running_loop()
        scale = self.options.time_scale
        deadline = loop.time()
        while True:
            if not self.scheduler.has_work():
                self._wake.clear()
                await self._wake.wait()
                deadline = loop.time()
                continue
            plan = self.core.schedule(time.monotonic())
            if not plan.scheduled:  # nothing fits until a request finishes or is aborted
                self._wake.clear()
                await self._wake.wait()
                deadline = loop.time()
                continue
            step_s = self.core.step_time_s(plan)
            # Read every step, so that replacing `options` on a running engine changes its faults at once.
            wait_s = step_s * scale + self.options.faults.slow_token_s
            if wait_s > 0:
                deadline = max(deadline + wait_s, loop.time() - 1.0)  # never bank more than 1 s of lag
                await asyncio.sleep(max(deadline - loop.time(), 0.0))
            elif loop.time() - deadline > _FLAT_OUT_SLICE_S:
                # time scale 0: run steps back to back, yielding to the HTTP side every slice, so a
                # streaming handler writes several tokens per wake-up instead of one syscall per token
                await asyncio.sleep(0)
                deadline = loop.time()
            self.core.complete_step(plan, time.monotonic())

    # --- CoreObserver: metrics, KV events, waking handlers -------------------------------------------------

    def on_schedule(self, core: EngineCore, plan: StepPlan) -> None:
        stats = core.scheduler.stats
        m = self.metrics
        if stats.prefix_queries:
            m.prefix_queries.inc(stats.prefix_queries)
            m.prefix_hits.inc(stats.prefix_hits)
            m.cached_device.inc(stats.prefix_hits)
            stats.prefix_queries = stats.prefix_hits = 0
        if stats.preemptions:
            m.preemptions.inc(stats.preemptions)
            stats.preemptions = 0
        if stats.external_queries:
            m.external_queries.inc(stats.external_queries)
            m.external_hits.inc(stats.external_hits)
            m.cached_p2p.inc(stats.external_hits)  # NixlConnector's hits come from another instance
            stats.external_queries = stats.external_hits = 0
        if self.publisher is not None and self.pool.events:
            self.publisher.publish(self.pool.take_events())

    def on_token(self, req: SimRequest, now: float) -> None:
        m = self.metrics
        if req.num_output_tokens == 1:
            self._computed_prompt += self._first_token(req)
        else:
            m.itl.observe(now - req.last_token_time)
        if req.finish_reason is not None:
            self._finished(req, now)
        if req.on_tokens is not None:
            req.on_tokens(req)

    def on_step(self, emitted: Sequence[SimRequest], now: float) -> None:
        if emitted:
            self.metrics.generation_tokens.inc(len(emitted))
        self.metrics.iteration_tokens.observe(self._computed_prompt + len(emitted))
        self._computed_prompt = 0

    def _first_token(self, req: SimRequest) -> int:
        m = self.metrics
        m.ttft.observe(req.first_token_time - req.arrival_time)
        prompt = req.num_prompt_tokens
        cached = max(req.num_cached_tokens, 0)
        external = req.num_external_tokens  # pulled from a prefill engine: cached, not computed here
        m.prompt_tokens.inc(prompt)
        m.prompt_computed.inc(prompt - cached)
        if cached:
            m.prompt_cache_hit.inc(cached - external)
            m.prompt_external.inc(external)
            m.prompt_cached.inc(cached)
        return prompt - cached  # vLLM 0.32 iteration_tokens_total counts computed prompt tokens

    def _finished(self, req: SimRequest, now: float) -> None:
        m = self.metrics
        n_out = req.num_output_tokens
        decode_s = now - req.first_token_time
        m.success[req.finish_reason or "stop"].inc()
        m.e2e.observe(now - req.arrival_time)
        m.queue_time.observe(req.first_scheduled_time - req.arrival_time)
        m.inference_time.observe(now - req.first_scheduled_time)
        m.prefill_time.observe(req.first_token_time - req.first_scheduled_time)
        m.decode_time.observe(decode_s)
        if n_out > 1:
            m.tpot.observe(decode_s / (n_out - 1))
        m.request_prompt_tokens.observe(req.num_prompt_tokens)
        m.request_generation_tokens.observe(n_out)
        m.max_generation_tokens.observe(req.max_tokens)
        m.params_n.observe(1)
        m.params_max_tokens.observe(req.max_tokens)
        m.request_preemptions.observe(req.num_preemptions)
        m.prefill_kv_computed.observe(req.num_prompt_tokens - max(req.num_cached_tokens, 0))

    def reset_prefix_cache(self) -> bool:
        ok = self.pool.reset_prefix_cache()
        if ok and self.publisher is not None and self.pool.events:
            self.publisher.publish(self.pool.take_events())
        return ok
