"""Summaries of fleet results: SLO attainment (overall and per hour), cost, replicas, cache and GPU use.

A request attains the SLO when its TTFT and its TPOT (decode time / (output tokens - 1)) are both within the
plan's targets; requests count in the hour they arrived.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from eksinfer.autoscale.fleet import FleetResult, percentile


@dataclass(frozen=True, slots=True)
class Summary:
    policy: str
    settings: dict[str, object]
    requests: int
    attainment: float
    attainment_per_hour: list[float]
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    tpot_p90_s: float
    gpu_hours: float
    cost_usd: float
    peak_replicas: int
    mean_replicas: float
    scale_ups: int
    scale_downs: int
    kv_hit_rate: float
    gpu_busy_share: float

    def row(self) -> dict[str, object]:
        return {
            "policy": self.policy,
            "attainment": round(self.attainment, 4),
            "ttft_p90_s": round(self.ttft_p90_s, 3),
            "tpot_p90_s": round(self.tpot_p90_s, 4),
            "gpu_hours": round(self.gpu_hours, 1),
            "cost_usd": round(self.cost_usd, 2),
            "peak_replicas": self.peak_replicas,
            "mean_replicas": round(self.mean_replicas, 2),
            "scale_events": self.scale_ups + self.scale_downs,
            "kv_hit_rate": round(self.kv_hit_rate, 3),
            "gpu_busy_share": round(self.gpu_busy_share, 3),
        }


def summarize(res: FleetResult, ttft_slo_s: float, tpot_slo_s: float) -> Summary:
    hours = max(1, math.ceil(res.duration_s / 3600.0))
    total = [0] * hours
    good = [0] * hours
    ok_all = 0
    for arrival, ttft, tpot in zip(res.arrival_s, res.ttft_s, res.tpot_s, strict=True):
        h = min(int(arrival // 3600), hours - 1)
        total[h] += 1
        if ttft <= ttft_slo_s and tpot <= tpot_slo_s:
            good[h] += 1
            ok_all += 1
    n = len(res.arrival_s)
    ttfts = [t for t in res.ttft_s if not math.isnan(t)] or [math.nan]
    tpots = [t for t in res.tpot_s if not math.isnan(t)] or [math.nan]
    node_hours = res.node_seconds / 3600.0
    return Summary(
        policy=res.policy,
        settings=res.settings,
        requests=n,
        attainment=ok_all / n if n else 1.0,
        attainment_per_hour=[g / t if t else 1.0 for g, t in zip(good, total, strict=True)],
        ttft_p50_s=percentile(ttfts, 0.5),
        ttft_p90_s=percentile(ttfts, 0.9),
        ttft_p99_s=percentile(ttfts, 0.99),
        tpot_p90_s=percentile(tpots, 0.9),
        gpu_hours=node_hours * res.gpus_per_node,
        cost_usd=node_hours * res.node_price_per_hour,
        peak_replicas=res.peak_pods,
        mean_replicas=res.pod_seconds / res.duration_s,
        scale_ups=res.scale_ups,
        scale_downs=res.scale_downs,
        kv_hit_rate=res.cached_tokens / res.prompt_tokens if res.prompt_tokens else 0.0,
        gpu_busy_share=res.busy_seconds / res.ready_seconds if res.ready_seconds else 0.0,
    )
