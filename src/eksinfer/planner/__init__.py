"""The capacity and cost planner: `make_plan(PlanRequest) -> Plan`.

Search (planner.search / planner.evaluate), then the Plan document (planner.build). When nothing meets the
request, InfeasibleError says what binds (memory, context, ttft, tpot, budget, max_nodes) and carries the
nearest feasible Plan, found by relaxing only the binding constraint.
"""

from __future__ import annotations

import dataclasses
import math

from eksinfer.catalog import get_instance, list_instances, price_regions
from eksinfer.errors import InfeasibleError
from eksinfer.planner.build import build_plan, dns_name
from eksinfer.planner.evaluate import evaluate_aggregated, evaluate_disaggregated, refine_open_loop
from eksinfer.planner.phases import check_plan, early, normalize
from eksinfer.planner.request import Constraints, OnPremPool, PlanRequest, Slo, Traffic
from eksinfer.planner.schema import Plan
from eksinfer.planner.search import (
    MAX_NODES_PER_ENGINE,
    TPOT_TAIL,
    TTFT_TAIL,
    Candidate,
    Misses,
    enumerate_shapes,
    model_tier,
    weighs_next_tier,
)

__all__ = ["Constraints", "OnPremPool", "Plan", "PlanRequest", "Slo", "Traffic", "dns_name", "make_plan"]

MAX_ALTERNATIVES = 5
# The open-loop queue model re-sizes the cheapest closed-loop candidates only (it costs ~10 ms a shape); it
# can only add replicas, so a candidate outside the first few rarely overtakes them.
OPEN_LOOP_CANDIDATES = 12


def _rank(c: Candidate) -> tuple[float, int, bool, int, bool, bool, float]:
    # equal cost: prefer the lower tier (fewer GPUs per replica; tiers meet only for `weighs_next_tier`
    # models), P/D disaggregation in tier 3 (its pattern), then the smallest MIG slice (MIG is there to
    # pack: the rest of the node stays free), then weights above FP4 and a BF16 KV cache (FP4 and FP8 KV
    # carry accuracy caveats and are chosen only when they save money), then the faster plan
    return (
        round(c.monthly_usd, 2),
        c.shape.tier,
        c.shape.mode != "disaggregated",
        -c.shape.slices_per_gpu,
        c.shape.precision == "fp4",
        c.shape.kv_cache_dtype != "auto",
        c.ttft_s,
    )


def _evaluate_tier(request: PlanRequest, tier: int, misses: Misses) -> list[Candidate]:
    out = []
    for shape in enumerate_shapes(request, tier):
        evaluate = evaluate_aggregated if shape.mode == "aggregated" else evaluate_disaggregated
        cand = evaluate(request, shape, misses)
        if cand is not None:
            out.append(cand)
    out.sort(key=_rank)
    refined = [r for r in (refine_open_loop(request, c) for c in out[:OPEN_LOOP_CANDIDATES]) if r is not None]
    return sorted(refined, key=_rank) + out[OPEN_LOOP_CANDIDATES:]


def _within_limits(request: PlanRequest, cands: list[Candidate]) -> tuple[list[Candidate], list[str]]:
    c = request.constraints
    binding = []
    kept = cands
    if c.max_nodes is not None:
        kept = [x for x in kept if x.nodes <= c.max_nodes]
        if cands and not kept:
            binding.append("max_nodes")
    if c.monthly_budget_usd is not None:
        fits = [x for x in kept if x.monthly_usd <= c.monthly_budget_usd]
        if kept and not fits:
            binding.append("budget")
        kept = fits
    return kept, binding


def _distinct(cands: list[Candidate]) -> list[Candidate]:
    seen, out = set(), []
    for cand in cands:
        s = cand.shape
        key = (s.instance.type, s.mode, s.tp, s.pp, s.dp, s.precision, s.kv_cache_dtype, s.mig_profile)
        if key not in seen:
            seen.add(key)
            out.append(cand)
    return out


def make_plan(request: PlanRequest, *, _relaxed: bool = False) -> Plan:
    """The cheapest plan meeting the request, or InfeasibleError naming what binds and the nearest plan."""
    request = normalize(request)
    request.validate()
    misses = Misses()
    binding: list[str] = []
    for tier in range(model_tier(request.model), 4):
        cands, limit_binding = _within_limits(request, _evaluate_tier(request, tier, misses))
        binding = binding or limit_binding
        if cands:
            above: list[Candidate] = []
            if tier < 3:  # what the next tier would cost
                above, _ = _within_limits(request, _evaluate_tier(request, tier + 1, Misses()))
            if weighs_next_tier(request.model) and tier == 1 and above:
                cands, above = sorted(cands + above, key=_rank), []
            runners = _distinct(cands)[1 : MAX_ALTERNATIVES - 1] + _distinct(above)[:2]
            plan = build_plan(request, cands[0], runners)
            check_plan(plan)
            return plan
    raise _infeasible(request, misses, binding, relaxed=_relaxed)


def _infeasible(
    request: PlanRequest, misses: Misses, binding: list[str], *, relaxed: bool
) -> InfeasibleError:
    if binding:
        what = " and ".join(binding)
        looser = dataclasses.replace(request.constraints, max_nodes=None, monthly_budget_usd=None)
        message = f"{what}: no plan for {request.model.id} fits within the node and budget limits"
    elif misses.closest is not None:
        _, shape, point = misses.closest
        ttft_ratio = point.ttft_s * TTFT_TAIL / request.slo.ttft_s
        tpot_ratio = point.tpot_s * TPOT_TAIL / request.slo.tpot_s
        binding = [name for name, r in (("ttft", ttft_ratio), ("tpot", tpot_ratio)) if r > 1] or ["ttft"]
        message = (
            f"{' and '.join(binding)}: best shape {shape.instance.type} TP {shape.tp} x PP {shape.pp} "
            f"{shape.precision} reaches mean TTFT {point.ttft_s:.2f} s / TPOT {point.tpot_s * 1e3:.1f} ms at "
            f"concurrency 1, against targets {request.slo.ttft_s:g} s / {request.slo.tpot_s * 1e3:g} ms "
            f"(p99 allowances x{TTFT_TAIL:g} / x{TPOT_TAIL:g})"
        )
        slo = Slo(
            preset="custom",
            ttft_s=_round_up(max(request.slo.ttft_s, point.ttft_s * TTFT_TAIL * 1.05)),
            tpot_s=_round_up(max(request.slo.tpot_s, point.tpot_s * TPOT_TAIL * 1.05)),
        )
        request = dataclasses.replace(request, slo=slo)
        looser = request.constraints
    else:
        binding = ["memory"]
        phase = request.constraints.phase
        limit = (
            f"one node per engine in phase {phase}: multi-node engines arrive in phase 2"
            if early(phase)
            else f"up to {MAX_NODES_PER_ENGINE} nodes per engine"
        )
        message = (
            f"memory: {request.model.id} ({request.model.total_params_b:.0f}B) fits no allowed instance "
            f"shape ({limit})"
        )
        unpriced, priced = _unpriced(request.constraints)
        if unpriced and not priced:  # nothing was tried: say so, not "too small"
            binding = ["price"]
            message = f"price: no allowed instance type has a price ({unpriced})"
        elif unpriced:
            message += f"; skipped for want of a price ({unpriced})"
        looser = dataclasses.replace(
            request.constraints, instance_families=(), precision=None, needs_mig=False
        )
    nearest = None
    if not relaxed and (looser != request.constraints or binding[0] in ("ttft", "tpot")):
        try:
            nearest = make_plan(dataclasses.replace(request, constraints=looser), _relaxed=True)
        except InfeasibleError:
            nearest = None
    if nearest is not None:
        message += f"; nearest feasible: {_summary(nearest)}"
    return InfeasibleError(message, binding=binding, nearest=nearest)


def _unpriced(c: Constraints) -> tuple[str, bool]:
    """("<capacity type> in <region>: <types>", naming the allowed types skipped for want of a price
    here and where the book does price them (p6-b300: us-west-2 only); whether any allowed type is priced
    here). ("", True) when the request names no families."""
    if not c.instance_families:
        return "", True
    skipped, priced = [], False
    for inst in list_instances(c.prices, c.region):
        if inst.family not in c.instance_families:
            continue
        if inst.price(c.capacity_type) is not None:
            priced = True
        else:
            elsewhere = [
                region
                for region in price_regions(c.prices)
                if region != inst.region
                and get_instance(inst.type, c.prices, region).price(c.capacity_type) is not None
            ]
            skipped.append(
                inst.type + (f" (priced in {', '.join(elsewhere)}: --region)" if elsewhere else "")
            )
    if not skipped:
        return "", priced
    region = c.region or price_regions(c.prices)[0]
    return f"{c.capacity_type} in {region}: {', '.join(skipped)}", priced


def _round_up(value: float) -> float:
    """A readable target just above `value` (two significant digits)."""
    digits = 1 - math.floor(math.log10(value))
    return float(math.ceil(value * 10**digits) / 10**digits)


def _summary(plan: Plan) -> str:
    role = plan.roles[-1]
    return (
        f"{plan.nodes.total_nodes} x {plan.instance.type} (TP {role.engine.tensor_parallel_size} x PP "
        f"{role.engine.pipeline_parallel_size}, {plan.mode}) ${plan.cost.monthly_usd:,.0f}/month, "
        f"TTFT {plan.prediction.ttft_s:.2f} s, TPOT {plan.prediction.tpot_s * 1e3:.1f} ms "
        f"(SLO {plan.slo.ttft_s:g} s / {plan.slo.tpot_s * 1e3:g} ms)"
    )
