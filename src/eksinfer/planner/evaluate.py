"""Score one engine shape: fit, SLO-feasible concurrency, replicas for the load, nodes and monthly cost."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from eksinfer.catalog import get_gpu
from eksinfer.errors import InfeasibleError
from eksinfer.perf import EnginePerf, ServingPoint, build_engine_perf, predict_aggregated, predict_prefill
from eksinfer.perf.mix import (
    MIN_UNCACHED_TOKENS,
    MixPoint,
    PdMixPoint,
    mix_service_curve,
    predict_aggregated_mix,
    predict_disaggregated_mix,
    prefill_pool_rate,
    remote_classes,
)
from eksinfer.perf.queueing import (
    OpenLoopPoint,
    ServiceCurve,
    erlang_c_wait_s,
    max_rate,
    open_loop,
    service_curve,
)
from eksinfer.perf.serving import PrefillPoint
from eksinfer.planner.request import PlanRequest
from eksinfer.planner.search import (
    RATE_HEADROOM,
    TPOT_TAIL,
    TTFT_TAIL,
    Candidate,
    Misses,
    Shape,
    build_perf,
    demand_requests_per_s,
    expert_parallel,
    meets,
    meets_latency,
    monthly_cost,
    node_count,
    sweep,
)


def max_model_lens(request: PlanRequest) -> list[int]:
    """--max-model-len to try: the next power of two >= 8192 covering ISL + OSL, then ISL + OSL itself."""
    need = request.traffic.longest_tokens
    limit = request.model.max_context
    if need > limit:
        raise InfeasibleError(
            f"context: {need:,} tokens per request exceed {request.model.id}'s {limit:,}-token context",
            binding=["context"],
        )
    roomy = min(limit, max(8192, 1 << (need - 1).bit_length()))
    tight = min(limit, math.ceil(need / 256) * 256)
    return [roomy] if roomy == tight else [roomy, tight]


def fit(request: PlanRequest, shape: Shape, misses: Misses) -> EnginePerf | None:
    for length in max_model_lens(request):
        try:
            return build_perf(request, shape, length)
        except InfeasibleError:
            continue
    misses.memory += 1
    return None


def _planned(ok: list[ServingPoint], need_rps: float) -> ServingPoint:
    """The lightest SLO-feasible point that still carries `need_rps` per replica."""
    return next((p for p in ok if p.requests_per_s >= need_rps), ok[-1])


def evaluate_aggregated(request: PlanRequest, shape: Shape, misses: Misses) -> Candidate | None:
    perf = fit(request, shape, misses)
    if perf is None:
        return None
    points = sweep(perf, request, decode_only=False)
    ok = [p for p in points if meets(p, request)]
    if not ok:
        if points:
            misses.note_slo(shape, points[0], request.slo.ttft_s, request.slo.tpot_s)
        else:
            misses.memory += 1
        return None
    best = ok[-1]
    on_prem_replicas, on_prem_rps, on_prem_conc = _on_prem_capacity(request, shape)
    t = request.traffic
    if t.concurrency is not None:
        remaining = max(0, t.concurrency - on_prem_conc)
        replicas = max(1, math.ceil(remaining / best.concurrency))
        per_replica = max(1, math.ceil(remaining / replicas))
        planned = (
            predict_aggregated_mix(perf, t.classes, concurrency=per_replica, prefix_hit=t.shared_prefix_ratio)
            if t.is_mix
            else predict_aggregated(
                perf,
                input_tokens=t.input_tokens,
                output_tokens=t.output_tokens,
                concurrency=per_replica,
                prefix_hit=t.shared_prefix_ratio,
            )
        )
    else:
        demand = demand_requests_per_s(request, best.e2e_s) * RATE_HEADROOM - on_prem_rps
        replicas = max(1, math.ceil(demand / best.requests_per_s))
        planned = _planned(ok, demand / replicas)
    nodes = node_count(shape, replicas)
    return Candidate(
        shape=shape,
        perf=perf,
        point=planned,
        batch=best.concurrency,
        replicas=replicas,
        prefill_replicas=0,
        ttft_s=planned.ttft_s,
        tpot_s=planned.tpot_s,
        requests_per_s=replicas * best.requests_per_s + on_prem_rps,
        nodes=nodes,
        monthly_usd=monthly_cost(shape, nodes, request),
        on_prem_replicas=on_prem_replicas,
    )


def _on_prem_capacity(request: PlanRequest, shape: Shape) -> tuple[int, float, int]:
    """(replicas, SLO-feasible req/s, concurrency) the on-prem GPUs add with the same engine shape."""
    pool = request.constraints.on_prem
    gpus_per_replica = shape.gpus_per_replica
    if pool is None or shape.tier == 3 or pool.gpus < gpus_per_replica:
        return 0, 0.0, 0
    try:
        perf = build_engine_perf(
            request.model,
            get_gpu(pool.gpu),
            tensor_parallel_size=shape.tp,
            pipeline_parallel_size=shape.pp,
            data_parallel_size=shape.dp,
            expert_parallel=expert_parallel(request.model, shape),
            precision=shape.precision,
            kv_cache_dtype=shape.kv_cache_dtype,
            max_model_len=request.traffic.longest_tokens,
        )
    except InfeasibleError:
        return 0, 0.0, 0
    ok = [p for p in sweep(perf, request, decode_only=False) if meets(p, request)]
    if not ok:
        return 0, 0.0, 0
    replicas = pool.gpus // gpus_per_replica
    return replicas, replicas * ok[-1].requests_per_s, replicas * ok[-1].concurrency


def evaluate_disaggregated(request: PlanRequest, shape: Shape, misses: Misses) -> Candidate | None:
    """Prefill and decode engines of the same shape, rate-matched (AIC picking.py)."""
    perf = fit(request, shape, misses)
    if perf is None:
        return None
    t = request.traffic
    if t.is_mix:
        return _evaluate_disaggregated_mix(request, shape, misses, perf)
    efa_gbytes_per_s = shape.instance.efa_gbps / 8  # every GPU's NICs move its share of the KV in parallel
    if t.input_tokens * (1.0 - t.shared_prefix_ratio) < MIN_UNCACHED_TOKENS:
        return None  # the gateway's decider prefills such prompts on their decode engine: no prefill pool
    prefill = predict_prefill(
        perf, input_tokens=t.input_tokens, prefix_hit=t.shared_prefix_ratio, kv_transfer_gbps=efa_gbytes_per_s
    )
    points = sweep(perf, request, decode_only=True)
    ok = [p for p in points if meets(p, request, ttft_s=prefill.ttft_s)]
    if not ok:
        if points:
            worst = points[0]
            misses.note_slo(shape, _with_ttft(worst, prefill.ttft_s), request.slo.ttft_s, request.slo.tpot_s)
        else:
            misses.memory += 1
        return None
    best = ok[-1]
    e2e = prefill.ttft_s + max(0, t.output_tokens - 1) * best.tpot_s
    headroom = 1.0 if t.concurrency is not None else RATE_HEADROOM
    demand = demand_requests_per_s(request, e2e) * headroom
    if t.concurrency is not None:
        decode_replicas = math.ceil(t.concurrency / best.concurrency)
        planned = _planned(ok, demand / decode_replicas)
    else:
        decode_replicas = max(1, math.ceil(demand / best.requests_per_s))
        planned = _planned(ok, demand / decode_replicas)
    # the prefill pool is a queue: the fewest engines whose TTFT (one prompt + the M/M/c wait at the demand)
    # meets the target; engines sized to the bare demand would run saturated with an unbounded TTFT
    prefill_replicas = max(1, math.ceil(demand / prefill.requests_per_s))
    while True:
        loaded = _loaded_prefill(perf, request, efa_gbytes_per_s, prefill_replicas, demand)
        if loaded.ttft_s * TTFT_TAIL <= request.slo.ttft_s:
            break
        prefill_replicas += 1
        if prefill_replicas > MAX_PREFILL_ENGINES:
            misses.note_slo(shape, _with_ttft(planned, loaded.ttft_s), request.slo.ttft_s, request.slo.tpot_s)
            return None
    ttft = max(prefill.ttft_s, loaded.ttft_s)  # never below AIC's closed-loop x1.8 (today's figure)
    nodes = node_count(shape, decode_replicas + prefill_replicas)
    capacity = min(decode_replicas * best.requests_per_s, prefill_replicas * prefill.requests_per_s)
    return Candidate(
        shape=shape,
        perf=perf,
        point=_with_ttft(planned, ttft),
        batch=best.concurrency,
        replicas=decode_replicas,
        prefill_replicas=prefill_replicas,
        ttft_s=ttft,
        tpot_s=planned.tpot_s,
        requests_per_s=capacity,
        nodes=nodes,
        monthly_usd=monthly_cost(shape, nodes, request),
    )


def _loaded_prefill(
    perf: EnginePerf, request: PlanRequest, gbytes_per_s: float, engines: int, arrivals: float
) -> PrefillPoint:
    t = request.traffic
    return predict_prefill(
        perf,
        input_tokens=t.input_tokens,
        prefix_hit=t.shared_prefix_ratio,
        kv_transfer_gbps=gbytes_per_s,
        replicas=engines,
        arrival_requests_per_s=arrivals,
    )


def _evaluate_disaggregated_mix(
    request: PlanRequest, shape: Shape, misses: Misses, perf: EnginePerf
) -> Candidate | None:
    """P/D for a prompt mix: the decider's split (classes from MIN_UNCACHED_TOKENS uncached tokens go to the
    prefill pool, the rest prefill on their decode engine), decode engines sized from their sweep, then the
    fewest prefill engines whose queue keeps the slowest class within the TTFT target (perf.mix)."""
    t, slo = request.traffic, request.slo
    gbps = shape.instance.efa_gbps / 8
    remote = remote_classes(t.classes, t.shared_prefix_ratio)
    if not any(remote):
        return None  # nothing would go to the prefill pool
    points = sweep(perf, request, decode_only=True)
    ok = [p for p in points if meets(p, request)]
    if not ok:
        if points:
            misses.note_slo(shape, points[0], slo.ttft_s, slo.tpot_s)
        else:
            misses.memory += 1
        return None
    best = ok[-1]
    rate = None if t.concurrency is not None else (t.requests_per_s or 1.0)
    if t.concurrency is not None:
        decode_replicas = max(1, math.ceil(t.concurrency / best.concurrency))
    else:
        decode_replicas = max(1, math.ceil((rate or 1.0) * RATE_HEADROOM / best.requests_per_s - 1e-9))

    def predict(engines: int, arrivals: float | None) -> PdMixPoint:
        return predict_disaggregated_mix(
            perf,
            t.classes,
            prefill_replicas=engines,
            decode_replicas=decode_replicas,
            concurrency=t.concurrency,
            requests_per_s=arrivals,
            prefix_hit=t.shared_prefix_ratio,
            kv_transfer_gbps=gbps,
        )

    per_prefill = prefill_pool_rate(perf, t.classes, prefix_hit=t.shared_prefix_ratio, kv_transfer_gbps=gbps)
    need = (rate or 0.0) * RATE_HEADROOM
    lowest = max(1, math.ceil(need / per_prefill - 1e-9))
    if lowest > MAX_PREFILL_ENGINES:
        return None

    def sized(engines: int) -> PdMixPoint:
        return predict(engines, None if rate is None else need)

    def fits(point: PdMixPoint) -> bool:
        return point.requests_per_s > 0 and meets(point.decode, request)

    # TTFT falls as prefill engines are added: gallop up from the bare demand, then bisect
    hi, last = lowest, sized(lowest)
    while not fits(last):
        if hi >= MAX_PREFILL_ENGINES:
            misses.note_slo(shape, last.decode, slo.ttft_s, slo.tpot_s)
            return None
        lowest, hi = hi + 1, min(MAX_PREFILL_ENGINES, hi * 2)
        last = sized(hi)
    while lowest < hi:
        mid = (lowest + hi) // 2
        if fits(sized(mid)):
            hi = mid
        else:
            lowest = mid + 1
    prefill_replicas = hi
    planned = sized(hi) if rate is None else predict(prefill_replicas, rate)
    nodes = node_count(shape, decode_replicas + prefill_replicas)
    return Candidate(
        shape=shape,
        perf=perf,
        point=planned.decode,
        batch=best.concurrency,
        replicas=decode_replicas,
        prefill_replicas=prefill_replicas,
        ttft_s=planned.ttft_s,
        tpot_s=planned.tpot_s,
        requests_per_s=min(decode_replicas * best.requests_per_s, prefill_replicas * per_prefill),
        nodes=nodes,
        monthly_usd=monthly_cost(shape, nodes, request),
    )


def open_loop_curve(request: PlanRequest, cand: Candidate) -> ServiceCurve:
    """The candidate's engine serving Poisson arrivals, its batch capped at the planned max-num-seqs."""
    t = request.traffic
    if t.is_mix:
        return mix_service_curve(cand.perf, t.classes, prefix_hit=t.shared_prefix_ratio, max_batch=cand.batch)
    return service_curve(
        cand.perf,
        input_tokens=t.input_tokens,
        output_tokens=t.output_tokens,
        prefix_hit=t.shared_prefix_ratio,
        max_batch=cand.batch,
    )


def refine_open_loop(request: PlanRequest, cand: Candidate) -> Candidate | None:
    """Re-size an aggregated, rate-targeted candidate with the open-loop queue model.

    The closed-loop sweep picks the batch; arrivals at a rate queue whenever the engine is busy, so the
    replica count is the target x RATE_HEADROOM over the highest arrival rate whose open-loop mean TTFT and
    TPOT still meet the SLOs, and the predicted latency is the open-loop one at the planned rate. None when
    no arrival rate meets the SLOs in open loop.
    """
    t = request.traffic
    if t.concurrency is not None:
        return cand  # a concurrency target is a closed loop
    if cand.shape.mode == "disaggregated":
        # a mix's P/D candidate is already sized at the arrival rate (its prefill pool as a queue)
        return cand if t.is_mix else _refine_disaggregated(request, cand)
    curve = open_loop_curve(request, cand)
    # a mix meets the TTFT target on its slowest class: the queue's wait is shared by every class, so the
    # slowest one sits above the open-loop mean by what its own prefill adds (the closed-loop gap)
    slowest = cand.point.slowest_ttft_s - cand.point.ttft_s if isinstance(cand.point, MixPoint) else 0.0
    per_replica = max_rate(curve, lambda p: _meets_open(p, request, slowest))
    if per_replica <= 0:
        return None
    on_prem_replicas, on_prem_rps, _ = _on_prem_capacity(request, cand.shape)
    demand = demand_requests_per_s(request, cand.point.e2e_s) * RATE_HEADROOM - on_prem_rps
    replicas = max(1, math.ceil(demand / per_replica - 1e-9))
    load = open_loop(curve, max(0.0, demand / RATE_HEADROOM) / replicas)
    point = ServingPoint(
        concurrency=max(1, round(load.mean_in_system)),
        running=max(1, round(load.mean_running)),
        ttft_s=load.ttft_s,
        tpot_s=load.tpot_s,
        e2e_s=load.e2e_s,
        requests_per_s=load.requests_per_s,
        output_tokens_per_s=load.requests_per_s * t.output_tokens,
        prefill_tokens_per_step=cand.point.prefill_tokens_per_step,
        kv_limited=False,
    )
    if isinstance(cand.point, MixPoint):  # each class's TTFT moves with the mean (the shared queue)
        shift = load.ttft_s - cand.point.ttft_s
        classes = tuple(dataclasses.replace(c, ttft_s=max(0.0, c.ttft_s + shift)) for c in cand.point.classes)
        point = MixPoint(**_kwargs(point), classes=classes)
    nodes = node_count(cand.shape, replicas)
    return dataclasses.replace(
        cand,
        point=point,
        replicas=replicas,
        ttft_s=point.ttft_s,
        tpot_s=point.tpot_s,
        requests_per_s=replicas * per_replica + on_prem_rps,
        nodes=nodes,
        monthly_usd=monthly_cost(cand.shape, nodes, request),
        on_prem_replicas=on_prem_replicas,
    )


MAX_PREFILL_ENGINES = 64


def _refine_disaggregated(request: PlanRequest, cand: Candidate) -> Candidate | None:
    """P/D under Poisson arrivals: prefill engines as an M/M/c queue (c engines, each at its batched prompt
    rate), TTFT = one prompt's prefill + transfer + the Erlang-C wait + the wait for a decode slot, in place
    of AIC's x1.8; decode engines through the flow-equivalent server of their decode-only curve. Each side
    gets the fewest engines that meet the SLOs at the target x RATE_HEADROOM."""
    t, perf = request.traffic, cand.perf
    efa_gbytes_per_s = cand.shape.instance.efa_gbps / 8
    prefill = predict_prefill(
        perf, input_tokens=t.input_tokens, prefix_hit=t.shared_prefix_ratio, kv_transfer_gbps=efa_gbytes_per_s
    )
    curve = service_curve(
        perf,
        input_tokens=t.input_tokens,
        output_tokens=t.output_tokens,
        max_batch=cand.batch,
        decode_only=True,
    )
    slot_wait_budget = request.slo.ttft_s / TTFT_TAIL - prefill.service_s
    per_decode = max_rate(
        curve,
        lambda p: p.tpot_s * TPOT_TAIL <= request.slo.tpot_s and p.queue_wait_s <= slot_wait_budget,
    )
    if per_decode <= 0:
        return None
    rate = demand_requests_per_s(request, cand.point.e2e_s)
    target = rate * RATE_HEADROOM
    decode_replicas = max(1, math.ceil(target / per_decode - 1e-9))

    def ttft(engines: int, arrivals: float) -> float:
        return prefill.service_s + erlang_c_wait_s(engines, prefill.requests_per_s, arrivals)

    prefill_replicas = max(1, math.ceil(target / prefill.requests_per_s - 1e-9))
    slot_wait = open_loop(curve, target / decode_replicas).queue_wait_s
    while (ttft(prefill_replicas, target) + slot_wait) * TTFT_TAIL > request.slo.ttft_s:
        prefill_replicas += 1
        if prefill_replicas > MAX_PREFILL_ENGINES:
            return None
    load = open_loop(curve, rate / decode_replicas)
    first = ttft(prefill_replicas, rate) + load.queue_wait_s
    point = ServingPoint(
        concurrency=max(1, round(load.mean_in_system)),
        running=max(1, round(load.mean_running)),
        ttft_s=first,
        tpot_s=load.tpot_s,
        e2e_s=first + load.e2e_s,
        requests_per_s=rate / decode_replicas,
        output_tokens_per_s=rate / decode_replicas * t.output_tokens,
        prefill_tokens_per_step=0.0,
        kv_limited=False,
    )
    nodes = node_count(cand.shape, decode_replicas + prefill_replicas)
    prefill_cap = max_prefill_rate(prefill_replicas, prefill, request)
    return dataclasses.replace(
        cand,
        point=point,
        replicas=decode_replicas,
        prefill_replicas=prefill_replicas,
        ttft_s=first,
        tpot_s=load.tpot_s,
        requests_per_s=min(decode_replicas * per_decode, prefill_cap),
        nodes=nodes,
        monthly_usd=monthly_cost(cand.shape, nodes, request),
    )


def max_prefill_rate(engines: int, prefill: PrefillPoint, request: PlanRequest) -> float:
    """The highest arrival rate the prefill engines take within the TTFT target (bisection)."""
    lo, hi = 0.0, engines * prefill.requests_per_s
    for _ in range(30):
        mid = (lo + hi) / 2
        wait = erlang_c_wait_s(engines, prefill.requests_per_s, mid)
        if (prefill.service_s + wait) * TTFT_TAIL <= request.slo.ttft_s:
            lo = mid
        else:
            hi = mid
    return lo


def _meets_open(point: OpenLoopPoint, request: PlanRequest, slowest: float = 0.0) -> bool:
    return not point.saturated and meets_latency(point.ttft_s + slowest, point.tpot_s, request)


def _kwargs(point: ServingPoint) -> dict[str, Any]:
    return {f.name: getattr(point, f.name) for f in dataclasses.fields(ServingPoint)}


def _with_ttft(point: ServingPoint, ttft_s: float) -> ServingPoint:
    """A decode-engine point carrying the prefill engine's TTFT (disaggregated serving)."""
    return dataclasses.replace(point, ttft_s=ttft_s, e2e_s=point.e2e_s + ttft_s)
