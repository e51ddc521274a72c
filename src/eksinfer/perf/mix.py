"""Prompt mixes: traffic as classes of (share, prompt, output) tokens, priced class by class.

Why: an engine step costs max(weights read, GEMM FLOPs) + attention, so its time is not linear in its tokens.
Priced at its mean prompt, a bimodal mix (30 % 8,192-token documents, 70 % 128-token chats) spreads the
documents' tokens evenly over every step, which makes every step compute-bound and hides the steps that only
decode and cost a whole weight read: the mean over-predicts aggregated throughput by 31-55 % against the
simulator (same step model, docs/gateway.md "P/D benchmark"). Here the steps are averaged by composition:

    C         = max_num_batched_tokens - d                       (a prompt chunk beside d decodes)
    full_i    = floor(new_i / C) full chunks of class i, each a step of C prompt tokens + d decodes
    pool      = the rest of every prompt (short prompts whole, long prompts' last chunk), spread evenly over
                the other steps: a request of class i lives s_i = (OSL_i - 1) + full_i + 1 steps, so per
                completed request the micro-batch runs K = sum w_i s_i / m steps (Little's law in steps), of
                which sum w_i full_i carry full chunks and the rest carry the pool beside the decodes
    d         = m x sum w_i (OSL_i - 1) / sum w_i s_i            (fixed point with C)
    TPOT      = the mean step time over those K steps (a decoding sequence is in every step)
    TTFT_i    = (own steps of class i + dispatch) x queueing_factor(B)
                + prompts_ahead(B) x mean prompt tokens x marginal seconds per prompt token
                (perf.serving's fitted queue terms, applied per class; + one mean step with async
                scheduling, as perf.serving), at least its share of full steps
                when the token budget binds; + the wait for a KV slot (Little's law) when B exceeds the fit
    rate      = running / sum w_i (TTFT_i + (OSL_i - 1) x TPOT)
A single class (or classes of one shape) is priced by `perf.serving.predict_aggregated` unchanged.
KV per sequence is the time-weighted mean of ISL_i + OSL_i / 2: a class holds its KV for its lifetime.

Prefill/decode disaggregation follows the gateway's decider (`gateway.pd.protocol.remote_prefill_pays`): a
prompt goes to the prefill pool when its uncached tokens reach `min_uncached_tokens` (256 by default);
shorter ones prefill on their decode engine. The decode engine is this same mixed model with the remote
classes' prompts already computed but their last token (vLLM recomputes it to sample the first token).
The prefill pool is a queue: P engines, each at its batched prompt rate (`predict_prefill`), remote
prompts arriving at X x (their share); TTFT_remote = one prompt's prefill + KV transfer + the M/G/c wait
(Erlang C x (1 + cv^2) / 2, Allen-Cunneen, with cv^2 the spread of service times over the remote classes)
+ its first step on the decode engine. A closed loop of N clients is solved for the decode engines'
concurrency k: N = D x k + X(k) x sum_remote w_i (prefill time_i), so TTFT rises toward and past the
prefill pool's saturation as Little's law requires.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from eksinfer.errors import UsageError
from eksinfer.perf.engine import EnginePerf
from eksinfer.perf.queueing import GRID, ServiceCurve, erlang_c_wait_s
from eksinfer.perf.queueing import _dense as dense
from eksinfer.perf.serving import (
    DISPATCH_PER_LAYER_S,
    ServingPoint,
    predict_aggregated,
    predict_prefill,
    prompts_ahead,
    queueing_factor,
)

MIN_UNCACHED_TOKENS = 256  # the gateway decider's default (gateway/pd/config.py PdProfile)
SHARE_TOLERANCE = 0.01  # shares must add up to 1 within this


@dataclass(frozen=True, slots=True)
class PromptClass:
    """One kind of request in the traffic: its share of requests and its token counts."""

    share: float
    input_tokens: int
    output_tokens: int


def parse_prompt_mix(text: str, flag: str = "--prompt-mix") -> tuple[PromptClass, ...]:
    """`SHARE:INPUT/OUTPUT,...` (e.g. `0.3:8192/256,0.7:128/256`) -> classes; a one-line UsageError else."""
    classes = []
    for part in (p.strip() for p in text.split(",")):
        try:
            share_s, tokens = part.split(":")
            in_s, out_s = tokens.split("/")
            share, isl, osl = float(share_s), int(in_s), int(out_s)
        except ValueError:
            raise UsageError(
                f"{part!r} is not SHARE:INPUT/OUTPUT (e.g. 0.3:8192/256,0.7:128/256)", field=flag
            ) from None
        if not 0 < share <= 1 or isl < 1 or osl < 1:
            raise UsageError(f"{part!r}: share must be in (0, 1], tokens >= 1", field=flag)
        classes.append(PromptClass(share, isl, osl))
    total = sum(c.share for c in classes)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise UsageError(f"shares add up to {total:g}, not 1", field=flag)
    return tuple(PromptClass(c.share / total, c.input_tokens, c.output_tokens) for c in classes)


def format_prompt_mix(classes: Sequence[PromptClass]) -> str:
    return ",".join(f"{c.share:g}:{c.input_tokens}/{c.output_tokens}" for c in classes)


def mean_tokens(classes: Sequence[PromptClass]) -> tuple[float, float]:
    """(mean prompt tokens, mean output tokens) per request."""
    return (
        sum(c.share * c.input_tokens for c in classes),
        sum(c.share * c.output_tokens for c in classes),
    )


def single_shape(classes: Sequence[PromptClass]) -> bool:
    return len({(c.input_tokens, c.output_tokens) for c in classes}) <= 1


def kv_tokens_per_sequence(perf: EnginePerf, classes: Sequence[PromptClass]) -> float:
    """Mean KV a running sequence holds: each class's ISL + OSL/2 (in whole blocks, plus the window's blocks
    of sliding-window layers), weighted by how long it runs (its share x its OSL)."""
    weights = [c.share * max(1, c.output_tokens) for c in classes]
    held = [perf.seq_kv_tokens(c.input_tokens + c.output_tokens / 2) for c in classes]
    return sum(w * h for w, h in zip(weights, held, strict=True)) / sum(weights)


def max_running_mix(perf: EnginePerf, classes: Sequence[PromptClass]) -> int:
    """Sequences of this mix that fit in KV at average occupancy, capped by max_num_seqs, per DP rank."""
    per_rank = min(perf.max_num_seqs, int(perf.kv_capacity_tokens // kv_tokens_per_sequence(perf, classes)))
    return max(0, per_rank * perf.data_parallel_size)


@dataclass(frozen=True, slots=True)
class ClassLatency:
    """One class's predicted TTFT (and whether P/D sends it to the prefill pool)."""

    share: float
    input_tokens: int
    output_tokens: int
    ttft_s: float
    remote: bool = False


@dataclass(frozen=True, slots=True)
class MixPoint(ServingPoint):
    """A ServingPoint of a mix: `ttft_s` is the share-weighted mean, `classes` each class's TTFT."""

    classes: tuple[ClassLatency, ...] = ()

    @property
    def slowest_ttft_s(self) -> float:
        """The TTFT of the slowest class with at least 1 % of requests: where the TTFT tail lives."""
        ttfts = [c.ttft_s for c in self.classes if c.share >= 0.01]
        return max(ttfts) if ttfts else self.ttft_s


def _wrap(point: ServingPoint, classes: Sequence[PromptClass], remote: bool = False) -> MixPoint:
    return MixPoint(
        point.concurrency,
        point.running,
        point.ttft_s,
        point.tpot_s,
        point.e2e_s,
        point.requests_per_s,
        point.output_tokens_per_s,
        point.prefill_tokens_per_step,
        point.kv_limited,
        classes=tuple(
            ClassLatency(c.share, c.input_tokens, c.output_tokens, point.ttft_s, remote) for c in classes
        ),
    )


@dataclass(frozen=True, slots=True)
class _Steps:
    """The mixed engine's steps per completed request: TPOT, each class's own prefill time and lifetime."""

    tpot_s: float
    own_s: tuple[float, ...]  # per class: the steps that carry its own prompt
    bound_s: tuple[float, ...]  # per class: its share of full steps when the token budget binds
    token_s: float  # marginal seconds per prompt token queued ahead
    prefill_per_step: float
    residual_s: float  # extra wait for the step in progress that mixed step lengths add
    mean_step_s: float  # mean step time over all steps (the one async scheduling has queued ahead)


def _steps(perf: EnginePerf, m: float, classes: Sequence[PromptClass], news: Sequence[float]) -> _Steps:
    """Average the steps of micro-batch `m` over their compositions (module docstring)."""
    budget = float(perf.max_num_batched_tokens)
    w = [c.share for c in classes]
    osl1 = [max(0, c.output_tokens - 1) for c in classes]
    dec_total = sum(wi * o for wi, o in zip(w, osl1, strict=True))
    ctx = sum(
        wi * o * (c.input_tokens + c.output_tokens / 2) for wi, o, c in zip(w, osl1, classes, strict=True)
    )
    ctx_per_decode = ctx / dec_total if dec_total else 0.0
    d = m
    for _ in range(6):  # fixed point between decodes per step and the chunk beside them
        chunk = max(1.0, budget - d)
        full = [math.floor(n / chunk) if n > chunk else 0 for n in news]
        life = [o + f + 1 for o, f in zip(osl1, full, strict=True)]
        k = sum(wi * s for wi, s in zip(w, life, strict=True)) / m  # steps per completion
        tokens = sum(wi * (n + o) for wi, n, o in zip(w, news, osl1, strict=True))
        if tokens / k > budget:  # the token budget binds: every step is full
            k = tokens / budget
        d = min(m, dec_total / k)
    chunk = max(1.0, budget - d)
    full = [math.floor(n / chunk) if n > chunk else 0 for n in news]
    rest = [n - f * chunk for n, f in zip(news, full, strict=True)]
    n_full = sum(wi * f for wi, f in zip(w, full, strict=True))
    n_pool = max(1e-9, k - n_full)
    pool_tokens = sum(wi * r for wi, r in zip(w, rest, strict=True))
    # query-key pairs of each class's remainder: it follows the cached part and its full chunks
    pool_pairs = sum(
        wi * r * (c.input_tokens - n + f * chunk + r)
        for wi, r, c, n, f in zip(w, rest, classes, news, full, strict=True)
    )
    per_pool = pool_tokens / n_pool
    decode_ctx = d * ctx_per_decode

    def step(prefill: float, pairs: float) -> float:
        return perf.step_time_s(
            prefill_tokens=prefill,
            prefill_attention_pairs=pairs,
            decode_seqs=d,
            decode_context_tokens=decode_ctx,
        )

    def full_steps(c: PromptClass, n: float, f: int) -> list[float]:
        cached = c.input_tokens - n
        return [step(chunk, chunk * (cached + (j + 1) * chunk)) for j in range(f)]

    chunks = [full_steps(c, n, f) for c, n, f in zip(classes, news, full, strict=True)]
    full_time = [sum(ts) for ts in chunks]
    pool_step = step(per_pool, pool_pairs / n_pool)
    busy = sum(wi * t for wi, t in zip(w, full_time, strict=True)) + n_pool * pool_step
    mean_step = busy / k
    # a decoding sequence sees the other m - 1 sequences' prompts, not its own (that is in its TTFT)
    others = max(0.0, m - 1.0) / m
    tpot = others * mean_step + (1.0 - others) * step(0.0, 0.0)
    # a new prompt waits for the step in progress: length-biased, E[t^2] / 2 E[t]; the queue terms fitted on
    # one-shape traffic cover steps of one length (t / 2), so only the excess a mix of step lengths adds
    squares = (
        sum(wi * sum(t * t for t in ts) for wi, ts in zip(w, chunks, strict=True)) + n_pool * pool_step**2
    )
    residual = max(0.0, squares / (2.0 * busy) - mean_step / 2.0) if busy > 0 else 0.0
    own = []
    for c, n, f, r, t in zip(classes, news, full, rest, full_time, strict=True):
        before = c.input_tokens - n + f * chunk
        own.append(t + (step(max(r, per_pool), max(r, per_pool) * (before + r)) if r > 0 else 0.0))
    without = step(0.0, 0.0)
    piece = max(1.0, min(chunk, sum(wi * n for wi, n in zip(w, news, strict=True))))
    token_s = max(0.0, step(piece, piece * piece) - without) / piece
    # budget binds: K steps per completion, of which the decode steps are sum w (OSL - 1) / m; the rest wait
    # for prompt tokens, shared out by each class's own tokens
    wait_steps = max(0.0, k * m - sum(wi * (o + 1) for wi, o in zip(w, osl1, strict=True)))
    mean_new = sum(wi * n for wi, n in zip(w, news, strict=True)) or 1.0
    bound = tuple((1.0 + wait_steps * n / mean_new) * mean_step for n in news)
    return _Steps(tpot, tuple(own), bound, token_s, pool_tokens / k, residual, mean_step)


def _mixed_engine(
    perf: EnginePerf,
    classes: Sequence[PromptClass],
    news: Sequence[float],
    concurrency: float,
    extra_ttft_s: Sequence[float] | None = None,
) -> tuple[ServingPoint, tuple[float, ...]]:
    """One engine serving the classes at a closed-loop concurrency: (point, per-class TTFT). `extra_ttft_s`
    adds time spent before the engine (P/D's prefill hop) to each class's TTFT and lifetime."""
    fits = max_running_mix(perf, classes)
    running = min(concurrency, float(fits))
    if running <= 0:
        inf = math.inf
        return ServingPoint(int(concurrency), 0, inf, inf, inf, 0.0, 0.0, 0.0, True), tuple(
            inf for _ in classes
        )
    m = running / perf.pipeline_parallel_size / perf.data_parallel_size
    s = _steps(perf, max(m, 1e-9), classes, news)
    dispatch = DISPATCH_PER_LAYER_S * perf.num_layers
    ahead = prompts_ahead(running / perf.data_parallel_size)
    mean_new = sum(c.share * n for c, n in zip(classes, news, strict=True))
    queue = ahead * mean_new * s.token_s
    extra = extra_ttft_s or [0.0] * len(classes)
    # vLLM >= 0.14 async scheduling: a new prompt also waits for the step already scheduled (as serving.py)
    ahead_step = s.mean_step_s if perf.async_scheduling else 0.0
    ttfts = [
        max((own + dispatch) * queueing_factor(running) + queue + s.residual_s + ahead_step, bound) + x
        for own, bound, x in zip(s.own_s, s.bound_s, extra, strict=True)
    ]
    e2e = sum(
        c.share * (t + max(0, c.output_tokens - 1) * s.tpot_s) for c, t in zip(classes, ttfts, strict=True)
    )
    # the time before the engine holds no engine slot: only the engine's part of E2E counts against running
    e2e_engine = e2e - sum(c.share * x for c, x in zip(classes, extra, strict=True))
    rate = running / max(e2e_engine, 1e-12)
    wait = concurrency / rate - e2e_engine if concurrency > running else 0.0
    ttfts = [t + wait for t in ttfts]
    mean_out = sum(c.share * c.output_tokens for c in classes)
    point = ServingPoint(
        concurrency=round(concurrency),
        running=round(running),
        ttft_s=sum(c.share * t for c, t in zip(classes, ttfts, strict=True)),
        tpot_s=s.tpot_s,
        e2e_s=e2e + wait,
        requests_per_s=rate,
        output_tokens_per_s=rate * mean_out,
        prefill_tokens_per_step=s.prefill_per_step,
        kv_limited=concurrency > running,
    )
    return point, tuple(ttfts)


def predict_aggregated_mix(
    perf: EnginePerf, classes: Sequence[PromptClass], *, concurrency: int, prefix_hit: float = 0.0
) -> MixPoint:
    """TTFT per class, TPOT and throughput of one aggregated engine serving the mix at a concurrency."""
    if single_shape(classes):
        c = classes[0]
        point = predict_aggregated(
            perf,
            input_tokens=c.input_tokens,
            output_tokens=c.output_tokens,
            concurrency=concurrency,
            prefix_hit=prefix_hit,
        )
        return _wrap(point, classes)
    news = [c.input_tokens * (1.0 - prefix_hit) for c in classes]
    point, ttfts = _mixed_engine(perf, classes, news, float(concurrency))
    latencies = tuple(
        ClassLatency(c.share, c.input_tokens, c.output_tokens, t) for c, t in zip(classes, ttfts, strict=True)
    )
    return MixPoint(*_fields(point), classes=latencies)


def _fields(p: ServingPoint) -> tuple[int, int, float, float, float, float, float, float, bool]:
    return (
        p.concurrency,
        p.running,
        p.ttft_s,
        p.tpot_s,
        p.e2e_s,
        p.requests_per_s,
        p.output_tokens_per_s,
        p.prefill_tokens_per_step,
        p.kv_limited,
    )


def predict_decode_mix(
    perf: EnginePerf,
    classes: Sequence[PromptClass],
    *,
    concurrency: int,
    prefix_hit: float = 0.0,
    min_uncached_tokens: int = MIN_UNCACHED_TOKENS,
) -> MixPoint:
    """One P/D decode engine at a closed-loop concurrency: the classes the decider sends remote arrive with
    their KV (the last prompt token recomputed), the others prefill here. Per-class TTFT is the engine's
    part only (no prefill hop)."""
    remote = remote_classes(classes, prefix_hit, min_uncached_tokens)
    news = [1.0 if r else c.input_tokens * (1.0 - prefix_hit) for c, r in zip(classes, remote, strict=True)]
    point, ttfts = _mixed_engine(perf, classes, news, float(concurrency))
    lat = tuple(
        ClassLatency(c.share, c.input_tokens, c.output_tokens, t, r)
        for c, t, r in zip(classes, ttfts, remote, strict=True)
    )
    return MixPoint(*_fields(point), classes=lat)


def mix_service_curve(
    perf: EnginePerf, classes: Sequence[PromptClass], *, prefix_hit: float = 0.0, max_batch: int | None = None
) -> ServiceCurve:
    """perf.queueing's service curve (closed-loop rate and TPOT per concurrency) for an aggregated engine
    serving the mix, so the open-loop queue model prices mixes too."""
    limit = max(1, max_running_mix(perf, classes))
    if max_batch is not None:
        limit = max(1, min(limit, max_batch))
    ks = [k for k in GRID if k < limit] + [limit]
    points = [predict_aggregated_mix(perf, classes, concurrency=k, prefix_hit=prefix_hit) for k in ks]
    return ServiceCurve(
        batch_limit=limit,
        rates=dense(ks, [p.requests_per_s for p in points], limit),
        tpots=dense(ks, [p.tpot_s for p in points], limit),
        output_tokens=round(mean_tokens(classes)[1]),
    )


def prefill_pool_rate(
    perf: EnginePerf,
    classes: Sequence[PromptClass],
    *,
    prefix_hit: float = 0.0,
    kv_transfer_gbps: float = 50.0,
    min_uncached_tokens: int = MIN_UNCACHED_TOKENS,
) -> float:
    """Requests/s (of the whole mix) one prefill engine can take: its remote prompt rate / remote share."""
    remote = remote_classes(classes, prefix_hit, min_uncached_tokens)
    pool = _prefill_pool(perf, classes, remote, prefix_hit, kv_transfer_gbps)
    return pool.per_engine_rate / pool.share if pool.share else math.inf


@dataclass(frozen=True, slots=True)
class PdMixPoint:
    """A P/D deployment serving the mix: per-class TTFT as the client sees it, decode TPOT, totals."""

    decode: MixPoint  # one decode engine; its `classes` carry the client-seen TTFT and `remote`
    prefill_replicas: int
    decode_replicas: int
    requests_per_s: float  # the whole deployment
    output_tokens_per_s: float
    prefill_wait_s: float  # mean wait in the prefill pool's queue (inf: saturated)
    prefill_utilization: float  # remote prompt work / prefill capacity (>= 1: saturated)
    remote_share: float  # share of requests the decider sends to the prefill pool

    @property
    def ttft_s(self) -> float:
        return self.decode.ttft_s

    @property
    def tpot_s(self) -> float:
        return self.decode.tpot_s

    @property
    def slowest_ttft_s(self) -> float:
        return self.decode.slowest_ttft_s


def remote_classes(
    classes: Sequence[PromptClass], prefix_hit: float = 0.0, min_uncached_tokens: int = MIN_UNCACHED_TOKENS
) -> tuple[bool, ...]:
    """Which classes the gateway's decider prefills remotely: uncached prompt tokens >= the threshold."""
    return tuple(c.input_tokens * (1.0 - prefix_hit) >= min_uncached_tokens for c in classes)


@dataclass(frozen=True, slots=True)
class _Pool:
    service_s: tuple[float, ...]  # per class: one prompt alone + dispatch + KV transfer (0 when local)
    share: float  # requests that go remote
    per_engine_rate: float  # remote prompts/s one prefill engine completes, batched, the mix's remote part
    cv2: float  # squared coefficient of variation of the remote classes' service times


def _prefill_pool(
    perf: EnginePerf, classes: Sequence[PromptClass], remote: Sequence[bool], prefix_hit: float, gbps: float
) -> _Pool:
    points = [
        predict_prefill(perf, input_tokens=c.input_tokens, prefix_hit=prefix_hit, kv_transfer_gbps=gbps)
        if r
        else None
        for c, r in zip(classes, remote, strict=True)
    ]
    share = sum(c.share for c, r in zip(classes, remote, strict=True) if r)
    if share <= 0:
        return _Pool(tuple(0.0 for _ in classes), 0.0, math.inf, 0.0)
    costs = [(c.share / share, 1.0 / p.requests_per_s) for c, p in zip(classes, points, strict=True) if p]
    mean = sum(pi * u for pi, u in costs)
    second = sum(pi * u * u for pi, u in costs)
    return _Pool(
        tuple(p.service_s if p else 0.0 for p in points), share, 1.0 / mean, max(0.0, second / mean**2 - 1.0)
    )


def prefill_wait_s(engines: int, per_engine_rate: float, arrivals_per_s: float, cv2: float) -> float:
    """Mean wait in a prefill pool of `engines` (M/G/c, Allen-Cunneen: Erlang C x (1 + cv^2) / 2)."""
    if arrivals_per_s <= 0:
        return 0.0
    return erlang_c_wait_s(engines, per_engine_rate, arrivals_per_s) * (1.0 + cv2) / 2.0


def predict_disaggregated_mix(
    perf: EnginePerf,
    classes: Sequence[PromptClass],
    *,
    prefill_replicas: int,
    decode_replicas: int,
    concurrency: int | None = None,
    requests_per_s: float | None = None,
    prefix_hit: float = 0.0,
    kv_transfer_gbps: float = 50.0,
    min_uncached_tokens: int = MIN_UNCACHED_TOKENS,
) -> PdMixPoint:
    """P prefill + D decode engines serving the mix in a closed loop (`concurrency` clients) or at an
    arrival rate (`requests_per_s`, each decode engine then at the concurrency that carries its share)."""
    remote = remote_classes(classes, prefix_hit, min_uncached_tokens)
    pool = _prefill_pool(perf, classes, remote, prefix_hit, kv_transfer_gbps)
    news = [1.0 if r else c.input_tokens * (1.0 - prefix_hit) for c, r in zip(classes, remote, strict=True)]
    engines = max(1, decode_replicas)
    capacity = prefill_replicas * pool.per_engine_rate if pool.share else math.inf

    def wait(rate: float) -> float:
        if not pool.share:
            return 0.0
        if prefill_replicas < 1:
            return math.inf
        return prefill_wait_s(prefill_replicas, pool.per_engine_rate, rate * pool.share, pool.cv2)

    def engine(k: float, hop_wait: float) -> tuple[ServingPoint, tuple[float, ...]]:
        extra = [s + hop_wait if r else 0.0 for s, r in zip(pool.service_s, remote, strict=True)]
        return _mixed_engine(perf, classes, news, k, extra)

    def hop(rate: float) -> float:  # mean seconds a request spends before its decode engine
        return sum(c.share * s for c, s in zip(classes, pool.service_s, strict=True)) + pool.share * wait(
            rate
        )

    if requests_per_s is not None:
        per_engine = requests_per_s / engines
        top = float(max(1, max_running_mix(perf, classes)))
        if engine(top, 0.0)[0].requests_per_s < per_engine:
            k = math.inf
        else:
            k = _bisect(lambda x: engine(x, 0.0)[0].requests_per_s >= per_engine, 1e-6, top)
        rate = requests_per_s
    else:
        n = float(concurrency or 1)

        def too_many(k: float) -> bool:
            x = engines * engine(k, 0.0)[0].requests_per_s
            return x * pool.share >= capacity or engines * k + x * hop(x) >= n

        k = _bisect(too_many, 1e-6, n / engines)
        rate = engines * engine(k, 0.0)[0].requests_per_s
    if not math.isfinite(k) or rate * pool.share >= capacity:
        inf = math.inf
        dead = ServingPoint(int(concurrency or 0), 0, inf, inf, inf, 0.0, 0.0, 0.0, True)
        lat = tuple(
            ClassLatency(c.share, c.input_tokens, c.output_tokens, inf, r)
            for c, r in zip(classes, remote, strict=True)
        )
        return PdMixPoint(
            MixPoint(*_fields(dead), classes=lat),
            prefill_replicas,
            decode_replicas,
            0.0,
            0.0,
            inf,
            math.inf,
            pool.share,
        )
    queued = wait(rate)
    point, ttfts = engine(k, queued)
    lat = tuple(
        ClassLatency(c.share, c.input_tokens, c.output_tokens, t, r)
        for c, t, r in zip(classes, ttfts, remote, strict=True)
    )
    mean_out = sum(c.share * c.output_tokens for c in classes)
    return PdMixPoint(
        decode=MixPoint(*_fields(point), classes=lat),
        prefill_replicas=prefill_replicas,
        decode_replicas=decode_replicas,
        requests_per_s=rate,
        output_tokens_per_s=rate * mean_out,
        prefill_wait_s=queued,
        prefill_utilization=rate * pool.share / capacity if pool.share else 0.0,
        remote_share=pool.share,
    )


def _bisect(high_enough: Callable[[float], bool], lo: float, hi: float, iterations: int = 30) -> float:
    """The smallest x in [lo, hi] where the monotone predicate turns true (hi when it never does)."""
    if high_enough(lo):
        return lo
    if not high_enough(hi):
        return hi
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if high_enough(mid):
            hi = mid
        else:
            lo = mid
    return hi
