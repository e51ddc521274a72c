"""The trade-off behind a plan: output tokens/s per GPU against tokens/s per user, for every engine shape of
the plan's tier, aggregated and prefill/decode, at every batch the sweep tries (AIConfigurator's Pareto view).

A point is one shape at one concurrency per (decode) replica. Per GPU counts every GPU the point needs: for
P/D, the decode engine plus the prefill engines its request rate keeps busy (rate / prefill engine rate).
Per user is 1 / TPOT. The front keeps the points no other point beats on both axes; the SLO line is the
per-user speed the TPOT target allows (1 / (TPOT target / p99 allowance)).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from eksinfer.perf import predict_prefill
from eksinfer.perf.mix import MixPoint, prefill_pool_rate
from eksinfer.planner.evaluate import fit
from eksinfer.planner.request import PlanRequest
from eksinfer.planner.schema import Plan
from eksinfer.planner.search import TPOT_TAIL, Misses, Shape, enumerate_shapes, meets, sweep


@dataclass(frozen=True, slots=True)
class ParetoPoint:
    label: str
    mode: str
    concurrency: int
    tokens_per_s_per_gpu: float
    tokens_per_s_per_user: float
    ttft_s: float
    meets_slo: bool
    chosen: bool = False
    on_front: bool = False


def _label(s: Shape) -> str:
    dp = f" x DP {s.dp}" if s.dp > 1 else ""
    mig = f" {s.mig_profile}" if s.mig_profile else ""
    return f"{s.instance.type}{mig} TP {s.tp} x PP {s.pp}{dp} {s.precision} KV {s.kv_cache_dtype}"


def _chosen_key(plan: Plan) -> tuple[str, str, int, int, int, str, str, int]:
    e = plan.roles[-1].engine
    batch = e.max_num_seqs * e.data_parallel_size
    mig = (plan.nodes.mig_profile or "").removeprefix("all-")
    return (
        plan.instance.type + mig,
        plan.mode,
        e.tensor_parallel_size,
        e.pipeline_parallel_size,
        e.data_parallel_size,
        e.precision,
        e.kv_cache_dtype,
        batch,
    )


def _shape_points(request: PlanRequest, shape: Shape) -> list[ParetoPoint]:
    perf = fit(request, shape, Misses())
    if perf is None:
        return []
    t, gpus = request.traffic, shape.gpus_per_replica / shape.slices_per_gpu
    disagg = shape.mode == "disaggregated"
    # a mix's TTFT tail is its longest prompt; a single class's is its own
    longest = max(c.input_tokens for c in t.classes) if t.is_mix else t.input_tokens
    prefill = (
        predict_prefill(perf, input_tokens=longest, prefix_hit=t.shared_prefix_ratio) if disagg else None
    )
    pool_rate = prefill.requests_per_s if prefill is not None else 0.0
    if prefill is not None and t.is_mix:  # only the classes the gateway's decider sends remote use the pool
        pool_rate = prefill_pool_rate(perf, t.classes, prefix_hit=t.shared_prefix_ratio)
    out = []
    for point in sweep(perf, request, decode_only=disagg):
        used = gpus
        ttft = point.slowest_ttft_s if isinstance(point, MixPoint) else point.ttft_s
        if prefill is not None:
            used = gpus * (1 + point.requests_per_s / pool_rate)
            ttft = prefill.ttft_s
        out.append(
            ParetoPoint(
                label=_label(shape),
                mode=shape.mode,
                concurrency=point.concurrency,
                tokens_per_s_per_gpu=point.output_tokens_per_s / used,
                tokens_per_s_per_user=1.0 / point.tpot_s,
                ttft_s=ttft,
                meets_slo=meets(point, request, ttft_s=ttft),
            )
        )
    return out


def pareto(request: PlanRequest, plan: Plan) -> list[ParetoPoint]:
    """Every point of the plan's tier, with the front and the chosen plan's point marked."""
    key = _chosen_key(plan)
    points: list[ParetoPoint] = []
    for shape in enumerate_shapes(request, plan.tier):
        for p in _shape_points(request, shape):
            s = shape
            inst = s.instance.type + (s.mig_profile or "")
            mine = (inst, s.mode, s.tp, s.pp, s.dp, s.precision, s.kv_cache_dtype, p.concurrency)
            points.append(dataclasses.replace(p, chosen=mine == key))
    best = -1.0
    front = set()
    for i in sorted(range(len(points)), key=lambda j: -points[j].tokens_per_s_per_user):
        if points[i].tokens_per_s_per_gpu > best:
            best = points[i].tokens_per_s_per_gpu
            front.add(i)
    return [dataclasses.replace(p, on_front=i in front) for i, p in enumerate(points)]


def slo_user_speed(request: PlanRequest) -> float:
    """Tokens/s per user at which the mean TPOT meets the target with its p99 allowance."""
    return TPOT_TAIL / request.slo.tpot_s


def write_png(points: list[ParetoPoint], request: PlanRequest, path: Path) -> Path:
    """Scatter of every point, the front, the SLO line and the chosen plan, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    for mode, color in (("aggregated", "tab:blue"), ("disaggregated", "tab:orange")):
        mine = [p for p in points if p.mode == mode]
        ax.scatter(
            [p.tokens_per_s_per_user for p in mine],
            [p.tokens_per_s_per_gpu for p in mine],
            s=10,
            alpha=0.4,
            color=color,
            label="P/D" if mode == "disaggregated" else "aggregated",
        )
    front = sorted((p for p in points if p.on_front), key=lambda p: p.tokens_per_s_per_user)
    ax.plot(
        [p.tokens_per_s_per_user for p in front], [p.tokens_per_s_per_gpu for p in front], "k-", label="front"
    )
    ax.axvline(slo_user_speed(request), color="tab:red", linestyle="--", label="TPOT SLO")
    for p in points:
        if p.chosen:
            ax.scatter(
                [p.tokens_per_s_per_user],
                [p.tokens_per_s_per_gpu],
                marker="*",
                s=250,
                color="tab:red",
                label="plan",
            )
    ax.set_xlabel("output tokens/s per user (1 / TPOT)")
    ax.set_ylabel("output tokens/s per GPU")
    ax.set_title(f"{request.model.id}: {request.traffic.input_tokens}/{request.traffic.output_tokens} tokens")
    ax.legend()
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
