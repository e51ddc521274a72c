"""Rate sweep up to saturation (after GuideLLM's `sweep` profile, simplified).

Without explicit rates: a throughput probe first (closed loop at `probe_concurrency`) measures the peak
request rate R; then `num_stages` open-loop Poisson stages at R*k/num_stages, k = 1..num_stages. With rates
given, those are run in order. Warm-up and the /v1/models check run once, in the first stage.

A stage is saturated when its completion rate falls below 90 % of its send rate: the server could not
keep up with what the client sent. The sweep stops after the first saturated stage unless
`stop_at_saturation` is False. Both rates are spacings, (n - 1) / (last - first), of the measured requests'
send times and completion times: in steady state completions are the sends shifted by about one latency, so
the two agree; overloaded, completions spread out at the server's own pace. Comparing with the actual send
rate rather than the nominal one keeps Poisson sampling noise (about 1/sqrt(n)) out of the verdict, and a
completed / duration ratio would call every short stage saturated, since the duration includes the last
request's latency.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eksinfer.bench.client import Clock
from eksinfer.bench.config import BenchConfig
from eksinfer.bench.result import BenchResult
from eksinfer.bench.runner import ProgressFn, run_bench
from eksinfer.bench.stats import nan_to_none

SATURATION_RATIO = 0.9  # achieved / offered below this = saturated
SWEEP_SCHEMA = "eksinfer.bench.sweep/v1"


@dataclass
class SweepStage:
    offered_rate: float | None  # None: the throughput probe
    result: BenchResult
    saturated: bool = False


@dataclass
class SweepResult:
    stages: list[SweepStage] = field(default_factory=list)
    peak_rate: float = math.nan
    interrupted: bool = False

    def to_json(self) -> dict[str, Any]:
        runs = []
        for st in self.stages:
            doc = st.result.to_json()
            doc["offered_rate"] = st.offered_rate
            doc["saturated"] = st.saturated
            doc["completion_rate"] = completion_rate(st.result)
            doc["send_rate"] = send_rate(st.result)
            runs.append(doc)
        out = {
            "schema": SWEEP_SCHEMA,
            "peak_rate": self.peak_rate,
            "interrupted": self.interrupted,
            "runs": runs,
        }
        return nan_to_none(out)  # type: ignore[return-value]

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")


def _spacing_rate(times: list[float]) -> float:
    if len(times) < 2 or max(times) <= min(times):
        return math.nan
    return (len(times) - 1) / (max(times) - min(times))


def completion_rate(result: BenchResult) -> float:
    """(n - 1) / span of completion times of the measured, successful requests; NaN below 2 requests."""
    return _spacing_rate([r.sent_s + (r.e2e_s or 0.0) for r in result.records if r.ok and not r.warmup])


def send_rate(result: BenchResult) -> float:
    """(n - 1) / span of send times of the measured requests."""
    return _spacing_rate([r.sent_s for r in result.records if not r.warmup and r.error != "cancelled"])


def is_saturated(result: BenchResult) -> bool:
    done, sent = completion_rate(result), send_rate(result)
    return not (math.isnan(done) or math.isnan(sent)) and done < SATURATION_RATIO * sent


async def run_sweep(
    config: BenchConfig,
    rates: Sequence[float] | None = None,
    *,
    num_stages: int = 5,
    probe_concurrency: int | None = None,
    stop_at_saturation: bool = True,
    stop: asyncio.Event | None = None,
    on_record: ProgressFn | None = None,
    clock: Clock = time.perf_counter,
) -> SweepResult:
    """One stage per rate (probe + evenly spaced rates when `rates` is None); see the module docstring."""
    stop = stop or asyncio.Event()
    sweep = SweepResult()
    first = True

    async def stage(rate: float | None, concurrency: int | None) -> BenchResult:
        nonlocal first
        update: dict[str, Any] = {"rate": rate, "concurrency": concurrency}
        if not first:
            update |= {"warmup": 0, "check_model": False}
        first = False
        cfg = BenchConfig.model_validate(config.model_dump() | update)
        return await run_bench(cfg, stop=stop, on_record=on_record, clock=clock)

    if rates is None:
        probe = await stage(None, probe_concurrency or config.concurrency or 32)
        sweep.stages.append(SweepStage(None, probe))
        sweep.peak_rate = probe.summary["request_throughput"]
        if math.isnan(sweep.peak_rate) or sweep.peak_rate <= 0 or stop.is_set():
            sweep.interrupted = stop.is_set()
            return sweep
        rates = [sweep.peak_rate * k / num_stages for k in range(1, num_stages + 1)]
    for rate in rates:
        if stop.is_set():
            break
        result = await stage(rate, None)
        saturated = is_saturated(result)
        sweep.stages.append(SweepStage(rate, result, saturated))
        if saturated and stop_at_saturation:
            break
    sweep.interrupted = stop.is_set()
    return sweep
