"""Steady-state latency and throughput of one engine under closed-loop load (mean field, no simulation).

Aggregated engine with chunked prefill, `concurrency` requests in flight (AIConfigurator's `run_agg`
specialised to vLLM: aiconfigurator @095f58a5 base_backend.py and vllm_backend.py):
    running   = min(concurrency, max_num_seqs, KV tokens / (ISL + OSL/2))   (the rest wait in the queue)
    a request lives K steps: OSL - 1 decode steps plus ceil(ISL_new / chunk) prefill steps, so an average
    step carries p = m x ISL_new / K prefill tokens and d = m x (OSL - 1) / K decodes (m = running / PP:
    one micro-batch per pipeline stage); when p + d exceeds max_num_batched_tokens the token budget binds,
    every step is full and K = m x (ISL_new + OSL - 1) / budget
    steps     of two kinds (`step_composition`): m x s of the K steps carry a prompt chunk (s = its chunks)
              beside m - 1 decodes, the rest m decodes only (when chunks overlap, m x s >= K, every step
              carries p: one kind); a step's time is taken at the kinds' mean tokens, which for every
              term linear in tokens is the mean-field step, but a MoE layer reads the mean of the kinds'
              touched experts (concave in tokens: a decode step of a few sequences wakes few experts);
              DP ranks step in lockstep, so a group step is a chunk step when any rank holds a chunk
              (`dp_lockstep`)
    TPOT      = the mean step of one request's own OSL - 1 decode steps, of which (m - 1) x s carry another
                request's chunk (vLLM's bench: (latency - TTFT) / (OSL - 1) per request); prefill chunks
                ride inside decode steps: the interleaving tax
    TTFT      = (own prefill steps + DISPATCH_PER_LAYER_S x layers) x min(1 + (B - 1) / 80, 8)
                + (B - 1) / 24 prompts ahead x ISL_new x marginal prefill seconds per token
                (AIC's per-layer vLLM dispatch term, refitted to 0.5 ms; the queue scales fitted to data),
                at least K - OSL + 1 steps (a prompt waits for its share of full steps when the budget binds)
                + one mean step with async scheduling (vLLM >= 0.14: two batches in flight, so a new
                prompt waits behind the step already scheduled; vllm/config/vllm.py max_concurrent_batches)
                + the wait for a KV slot when concurrency exceeds what fits (Little's law)
    E2E       = TTFT + (OSL - 1) x TPOT ;  requests/s = running / E2E_running ;  tokens/s = requests/s x OSL
Disaggregated: a prefill engine runs whole prompts back to back, a decode engine only decodes; AIC rate
matching derates them by 0.9 (pipeline bubble) and 0.92 (unsaturated batch slots), and multiplies the
prefill TTFT by 1.8 for queueing (aiconfigurator picking.py), plus the KV transfer over EFA. Given an arrival
rate and a replica count, `predict_prefill` replaces the x1.8 with the prefill pool's queue (M/G/c wait), so a
split short of prefill capacity predicts a TTFT that grows without bound. Prompt mixes: perf/mix.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from eksinfer.perf.engine import EnginePerf

# Closed-loop benchmarks keep arrivals bunched, so a new prompt waits in two ways (fitted together with
# engine.SEQ_OVERHEAD_S on the 219 calibration runs, benchmarks/bench_plan.py):
# - its own prefill steps stretch with the batch: x (1 + (B - 1) / QUEUE_CONCURRENCY_SCALE) (this replaces
#   AIC's min(1 + log2(B)/8, 2), which undershoots at B > 16);
# - it queues behind (B - 1) / QUEUE_PROMPT_SCALE other prompts' tokens at the marginal prefill cost per
#   token. A long prompt fills the token budget, so prompts ahead cost their whole prefill: the first term
#   alone under-predicted 4,096-token TTFT by about 40 % (Qwen3-32B BF16) while fitting 1,024-token prompts.
QUEUE_CONCURRENCY_SCALE = 80.0
QUEUE_PROMPT_SCALE = 24.0
QUEUE_FACTOR_CAP = 8.0
# Per request, added to its own prefill (not a floor under it): AIC's vLLM dispatch overhead. The calibration
# runs need it at TP 1 too, where the GPU is busy for over a second, so it is not the eager launch cost of the
# prefill step; it does not double count engine.LAYER_OVERHEAD_S (gaps inside every step) or STEP_OVERHEAD_S
# (host work per step).
DISPATCH_PER_LAYER_S = 0.5e-3  # AIC vllm_backend uses 0.8 ms x layers; 0.5 ms fits the 219 runs better
PREFILL_RATE_DERATE = 0.9  # AIC picking.py: pipeline bubble
DECODE_RATE_DERATE = 0.92  # AIC picking.py: batch slots not saturated
DISAGG_TTFT_FACTOR = 1.8  # AIC _AUTOSCALE_TTFT_CORRECTION_FACTOR
KV_TRANSFER_SETUP_S = 1e-3  # RDMA setup 0.5-2 ms (llm-d-inference-sim latency profiles)


@dataclass(frozen=True, slots=True)
class ServingPoint:
    """Predicted steady state of one engine at one load."""

    concurrency: int
    running: int  # sequences holding KV; concurrency - running wait in the queue
    ttft_s: float
    tpot_s: float
    e2e_s: float
    requests_per_s: float
    output_tokens_per_s: float
    prefill_tokens_per_step: float
    kv_limited: bool


def queueing_factor(concurrency: float) -> float:
    """How much longer a prompt's own prefill steps take when `concurrency` requests are in flight."""
    return min(1.0 + (max(1.0, concurrency) - 1.0) / QUEUE_CONCURRENCY_SCALE, QUEUE_FACTOR_CAP)


def prompts_ahead(running: float) -> float:
    """Mean number of other prompts whose prefill tokens a new prompt waits behind (closed loop)."""
    return max(0.0, running - 1.0) / QUEUE_PROMPT_SCALE


def max_running(perf: EnginePerf, input_tokens: int, output_tokens: int) -> int:
    """Sequences of this shape that fit in KV at average occupancy (ISL + OSL/2), capped by max_num_seqs;
    each data-parallel rank has its own KV cache and its own --max-num-seqs."""
    per_seq = int(perf.seq_kv_tokens(input_tokens + output_tokens / 2))  # whole blocks; sliding: window
    per_rank = min(perf.max_num_seqs, perf.kv_capacity_tokens // max(1, per_seq))
    return max(0, per_rank * perf.data_parallel_size)


@dataclass(frozen=True, slots=True)
class StepKind:
    """One kind of step of the closed loop: how often it runs and what it carries (per micro-batch)."""

    share: float  # of the steps being averaged
    prefill_tokens: float
    decode_seqs: float


def expected_step_s(perf: EnginePerf, kinds: tuple[StepKind, ...], isl: int, new: float, osl: int) -> float:
    """Mean step time over step kinds: the step at their mean tokens, reading the mean of their touched
    experts.

    Tokens enter a step linearly (GEMM FLOPs, KV reads, and attention pairs: a prompt's chunks attend to
    cached + (new + chunk) / 2 keys on average, so a mean of p prompt tokens per step costs p x (cached +
    new / 2) causal pairs whatever the chunking), so the step at the mean tokens is the calibrated mean-field
    step, unchanged for dense models. The experts a MoE layer reads are concave in its tokens
    (E x (1 - (1 - k/E)^n)): a decode-only step of a few sequences wakes few experts, a step with a prompt
    chunk most of them, and their mean is far below what the mean tokens would wake (Jensen). So the expert
    read is averaged over the kinds, not taken at the mean.
    """
    total = sum(k.share for k in kinds)

    def mean(of: Callable[[StepKind], float]) -> float:
        return sum(k.share * of(k) for k in kinds) / total

    prefill, decodes = mean(lambda k: k.prefill_tokens), mean(lambda k: k.decode_seqs)
    return perf.step_time_s(
        prefill_tokens=prefill,
        prefill_attention_pairs=prefill * (isl - new + (new + min(prefill, new)) / 2.0),
        decode_seqs=decodes,
        decode_context_tokens=decodes * (isl + osl / 2.0),
        touched_experts=mean(lambda k: perf.touched_experts(k.prefill_tokens + k.decode_seqs)),
    )


@dataclass(frozen=True, slots=True)
class StepComposition:
    """The steps one request lives through, as `step_composition` finds them."""

    mean_s: float  # mean over all steps: the step a newly arrived prompt finds in flight
    tpot_s: float  # mean over one request's own decode steps: the inter-token gap its client measures
    prefill_tokens_per_step: float  # mean over all steps
    lifetime: float  # steps one request lives
    prompt_steps: float  # of which carry its own prompt (lifetime - (OSL - 1))
    chunk_share: float  # of all steps, those carrying a prompt chunk (1: every step does)
    seen_share: float  # of one request's decode steps, those carrying another request's chunk


def step_composition(perf: EnginePerf, m: float, isl: int, new: float, osl: int) -> StepComposition:
    """Chunk steps and decode-only steps of micro-batch m, in the proportions the closed loop implies.

    A request lives (OSL - 1) decode steps plus s = ceil(ISL_new / chunk) prompt steps, or, when the step
    token budget binds, m x (ISL_new + OSL - 1) / budget steps (every step full, the budget shared). vLLM's
    scheduler serves the running requests' decodes first and fills the rest of the token budget with a
    waiting prompt (vllm/v1/core/sched/scheduler.py), so a prompt enters in chunks of up to the budget: of
    every K = lifetime steps, m x s carry a chunk of ISL_new / s tokens beside m - 1 decodes and the rest
    carry m decodes only (the token totals of the mean field: m x ISL_new prompt and m x (OSL - 1) decode
    tokens per K steps). Where those chunks would overlap (m x s >= K) every step carries prompt tokens and
    one kind, the mean-field step, remains.
    TPOT is what vLLM's benchmark reports, per request (latency - TTFT) / (OSL - 1) (vllm/benchmarks/
    serve.py): the mean of that request's own decode steps, of which the other m - 1 requests' chunk
    steps, (m - 1) x s of OSL - 1, carry a prompt chunk.
    """
    budget = perf.max_num_batched_tokens
    decodes = m
    prefill = 0.0
    lifetime = 1.0
    prompt_steps = 1.0
    for _ in range(4):  # fixed point between decodes per step and prefill chunk size
        chunk = max(1.0, budget - decodes)
        prompt_steps = float(max(1, math.ceil(new / chunk))) if new > 0 else 1.0
        lifetime = max(1.0, (osl - 1) + prompt_steps)
        if m * (new + osl - 1) / lifetime > budget:  # token budget binds: every step is full
            lifetime = m * (new + osl - 1) / budget
        prefill, decodes = m * new / lifetime, m * max(0, osl - 1) / lifetime
    own_prompt = lifetime - max(0, osl - 1)
    chunk_steps = m * prompt_steps if new > 0 else 0.0
    if chunk_steps >= lifetime or osl <= 1:  # every step carries prompt tokens: the mean-field step
        step = expected_step_s(perf, (StepKind(1.0, prefill, decodes),), isl, new, osl)
        return StepComposition(step, step, prefill, lifetime, own_prompt, 1.0, 1.0)
    beside = max(0.0, m - 1.0)  # decodes beside a chunk; the decode-only steps take the rest
    alone = (m * (osl - 1) - chunk_steps * beside) / (lifetime - chunk_steps)
    share, seen = dp_lockstep(
        chunk_steps / lifetime, min(1.0, beside * prompt_steps / (osl - 1)), perf.data_parallel_size
    )

    def mix(f: float) -> float:
        kinds = (StepKind(f, new / prompt_steps, beside), StepKind(1.0 - f, 0.0, alone))
        return expected_step_s(perf, kinds, isl, new, osl)

    return StepComposition(mix(share), mix(seen), prefill, lifetime, own_prompt, share, seen)


def dp_lockstep(share: float, seen: float, ranks: int) -> tuple[float, float]:
    """Chunk-step shares of a data-parallel group, from one rank's: (all steps, one request's decode steps).

    vLLM's DP ranks of a MoE model run their forward passes aligned (docs/serving/data_parallel_deployment.md:
    expert layers synchronise every forward pass, idle ranks run dummy ones) and pad each step to the largest
    rank's token count (vllm/v1/worker/dp_utils.py, coordinate_batch_across_dp). So a group step carries a
    prompt chunk's cost when any rank has one: with ranks' chunks independent, 1 - (1 - share)^D of all steps,
    and of a request's own decode steps 1 - (1 - seen)(1 - share)^(D - 1), its own rank's chunks (seen)
    or any other rank's. One rank (D = 1) is unchanged.
    """
    if ranks <= 1:
        return share, seen
    idle = (1.0 - share) ** (ranks - 1)
    return 1.0 - (1.0 - share) * idle, 1.0 - (1.0 - seen) * idle


def _own_prefill_s(perf: EnginePerf, m: float, isl: int, new: float, osl: int) -> float:
    """Time of the steps that carry one request's own prompt, chunk by chunk, beside the running decodes."""
    decodes = max(0.0, m - 1.0) * max(0, osl - 1) / max(1.0, osl - 1 + 1.0)
    chunk = max(1.0, perf.max_num_batched_tokens - decodes)
    done, total = float(isl) - new, 0.0
    remaining = new
    while remaining > 0:
        tokens = min(chunk, remaining)
        total += perf.step_time_s(
            prefill_tokens=tokens,
            prefill_attention_pairs=tokens * (done + tokens),
            decode_seqs=decodes,
            decode_context_tokens=decodes * (isl + osl / 2.0),
        )
        done += tokens
        remaining -= tokens
    return total


def _prefill_token_s(perf: EnginePerf, m: float, isl: int, new: float, osl: int) -> float:
    """Marginal seconds per prompt token in a step: what a prompt queued ahead adds to a new one's TTFT."""
    decodes = max(0.0, m - 1.0) * max(0, osl - 1) / max(1.0, float(osl))
    chunk = max(1.0, min(new, perf.max_num_batched_tokens - decodes))
    ctx = decodes * (isl + osl / 2.0)
    with_chunk = perf.step_time_s(
        prefill_tokens=chunk,
        prefill_attention_pairs=chunk * (isl - new + chunk),
        decode_seqs=decodes,
        decode_context_tokens=ctx,
    )
    without = perf.step_time_s(
        prefill_tokens=0, prefill_attention_pairs=0, decode_seqs=decodes, decode_context_tokens=ctx
    )
    return max(0.0, with_chunk - without) / chunk


def predict_aggregated(
    perf: EnginePerf, *, input_tokens: int, output_tokens: int, concurrency: int, prefix_hit: float = 0.0
) -> ServingPoint:
    """Mean-field TTFT, TPOT and throughput of one aggregated engine at a closed-loop concurrency."""
    fits = max_running(perf, input_tokens, output_tokens)
    running = min(concurrency, fits)
    if running <= 0:
        inf = math.inf
        return ServingPoint(concurrency, 0, inf, inf, inf, 0.0, 0.0, 0.0, True)
    new = input_tokens * (1.0 - prefix_hit)
    m = running / perf.pipeline_parallel_size / perf.data_parallel_size
    steps = step_composition(perf, m, input_tokens, new, output_tokens)
    dispatch = DISPATCH_PER_LAYER_S * perf.num_layers
    own = _own_prefill_s(perf, m, input_tokens, new, output_tokens)
    ahead = prompts_ahead(running / perf.data_parallel_size)
    ttft_run = (own + dispatch) * queueing_factor(running) + ahead * new * _prefill_token_s(
        perf, m, input_tokens, new, output_tokens
    )
    if perf.async_scheduling:  # the step already scheduled ahead of the first one that can take the prompt
        ttft_run += steps.mean_s
    decode_steps = max(0, output_tokens - 1)
    # A request cannot finish faster than the steps its tokens need: when the token budget binds, a prompt
    # waits for its share of full steps, so TTFT is the lifetime less the decode steps (the throughput this
    # implies is budget x PP / step x OSL / (ISL_new + OSL - 1) output tokens/s, no more).
    ttft_run = max(ttft_run, steps.prompt_steps * steps.mean_s)
    e2e_run = ttft_run + decode_steps * steps.tpot_s
    rate = running / e2e_run
    wait = concurrency / rate - e2e_run if concurrency > running else 0.0
    return ServingPoint(
        concurrency=concurrency,
        running=running,
        ttft_s=ttft_run + wait,
        tpot_s=steps.tpot_s,
        e2e_s=e2e_run + wait,
        requests_per_s=rate,
        output_tokens_per_s=rate * output_tokens,
        prefill_tokens_per_step=steps.prefill_tokens_per_step,
        kv_limited=concurrency > running,
    )


@dataclass(frozen=True, slots=True)
class PrefillPoint:
    ttft_s: float  # no arrival rate given: AIC's x1.8 queueing correction; else service + the pool's wait
    requests_per_s: float  # one engine, batched, derated
    service_s: float = 0.0  # one prompt alone: prefill + dispatch + KV transfer (no queueing)
    wait_s: float = 0.0  # mean wait in the pool's queue at the given arrival rate (inf: saturated)
    utilization: float = 0.0  # arrivals / (replicas x requests_per_s); >= 1 saturates the pool


def predict_prefill(
    perf: EnginePerf,
    *,
    input_tokens: int,
    prefix_hit: float = 0.0,
    kv_transfer_gbps: float = 50.0,
    replicas: int = 1,
    arrival_requests_per_s: float | None = None,
    service_cv2: float = 1.0,
) -> PrefillPoint:
    """A prefill-only engine running prompts in full token-budget batches (disaggregated serving).

    With `arrival_requests_per_s` the `replicas` engines form a queue (M/G/c: the Erlang-C wait of c servers
    at this rate x (1 + service_cv2) / 2, Allen-Cunneen; 1.0 is M/M/c, 0 deterministic prompts), so TTFT
    grows with the arrival rate toward the pool's capacity and is infinite at or past it. Without it, AIC's
    closed-loop x1.8 stands in for the queue (the model before the load term).
    """
    new = max(1.0, input_tokens * (1.0 - prefix_hit))
    cached = input_tokens - new
    per_step = max(new, float(perf.max_num_batched_tokens))
    prompts = per_step / new
    step = perf.step_time_s(
        prefill_tokens=per_step,
        prefill_attention_pairs=prompts * new * (cached + new),
        decode_seqs=0,
        decode_context_tokens=0,
    )
    one = perf.step_time_s(
        prefill_tokens=new,
        prefill_attention_pairs=new * (cached + new),
        decode_seqs=0,
        decode_context_tokens=0,
    )
    transfer = input_tokens * perf.kv_bytes_per_token / (kv_transfer_gbps * 1e9) + KV_TRANSFER_SETUP_S
    ttft = (one + DISPATCH_PER_LAYER_S * perf.num_layers) * DISAGG_TTFT_FACTOR + transfer
    rate = prompts / step * perf.pipeline_parallel_size * perf.data_parallel_size * PREFILL_RATE_DERATE
    service = one + DISPATCH_PER_LAYER_S * perf.num_layers + transfer
    if arrival_requests_per_s is None:
        return PrefillPoint(ttft_s=ttft, requests_per_s=rate, service_s=service)
    from eksinfer.perf.queueing import erlang_c_wait_s  # queueing builds on this module

    engines = max(1, replicas)
    wait = erlang_c_wait_s(engines, rate, arrival_requests_per_s) * (1.0 + service_cv2) / 2.0
    return PrefillPoint(
        ttft_s=service + wait,
        requests_per_s=rate,
        service_s=service,
        wait_s=wait,
        utilization=arrival_requests_per_s / (engines * rate),
    )


def predict_decode(
    perf: EnginePerf, *, input_tokens: int, output_tokens: int, concurrency: int
) -> ServingPoint:
    """A decode-only engine holding `concurrency` sequences (capped by KV); no prefill tax on TPOT."""
    running = min(concurrency, max_running(perf, input_tokens, output_tokens))
    if running <= 0:
        inf = math.inf
        return ServingPoint(concurrency, 0, inf, inf, inf, 0.0, 0.0, 0.0, True)
    m = running / perf.pipeline_parallel_size / perf.data_parallel_size
    step = perf.step_time_s(
        prefill_tokens=0,
        prefill_attention_pairs=0,
        decode_seqs=m,
        decode_context_tokens=m * (input_tokens + output_tokens / 2.0),
    )
    e2e = max(1, output_tokens - 1) * step
    rate = running / e2e * DECODE_RATE_DERATE
    return ServingPoint(
        concurrency, running, 0.0, step, e2e, rate, rate * output_tokens, 0.0, concurrency > running
    )
