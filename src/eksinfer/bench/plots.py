"""PNG plots with matplotlib's Agg backend (no display needed): latency CDFs, TTFT over time, and for a
sweep, achieved throughput and latency against offered rate. Inputs are result JSON documents, so saved runs
can be plotted again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _measured(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in doc["requests"] if not r["warmup"] and r["error"] is None]


def latency_cdfs(doc: Mapping[str, Any], path: Path) -> Path:
    """One panel per metric: empirical CDF of TTFT, TPOT, ITL and e2e (ms)."""
    plt = _plt()
    reqs = _measured(doc)
    series = {
        "TTFT": [r["ttft_ms"] for r in reqs if r["ttft_ms"] is not None],
        "TPOT": [r["tpot_ms"] for r in reqs if r["tpot_ms"] is not None],
        "ITL": [g for r in reqs for g in r["itl_ms"]],
        "E2E": [r["e2e_ms"] for r in reqs if r["e2e_ms"] is not None],
    }
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (name, values) in zip(axes.flat, series.items(), strict=True):
        values = sorted(values)
        if values:
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], drawstyle="steps-post")
        ax.set_title(f"{name} CDF ({len(values)} samples)")
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def ttft_over_time(doc: Mapping[str, Any], path: Path) -> Path:
    """TTFT of each request against its send time: a rising trend means a queue is building."""
    plt = _plt()
    reqs = [r for r in _measured(doc) if r["ttft_ms"] is not None]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.scatter([r["sent_ms"] / 1000 for r in reqs], [r["ttft_ms"] for r in reqs], s=6)
    ax.set_xlabel("send time (s from start)")
    ax.set_ylabel("TTFT (ms)")
    ax.set_title("TTFT over time")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def throughput_vs_rate(runs: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """For a sweep: achieved throughput (completion rate) and TTFT P50/P99 against the offered rate."""
    plt = _plt()
    stages = sorted((r for r in runs if r.get("offered_rate") is not None), key=lambda r: r["offered_rate"])
    rates = [r["offered_rate"] for r in stages]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    # completion rate (sweep.py): steady-state throughput, free of the last request's latency tail
    achieved = [r.get("completion_rate") or r["summary"]["request_throughput"] for r in stages]
    ax1.plot(rates, achieved, marker="o", label="achieved (completion rate)")
    ax1.plot(rates, rates, linestyle="--", color="grey", label="offered")
    ax1.set_xlabel("offered rate (req/s)")
    ax1.set_ylabel("requests/s")
    ax1.legend()
    ax1.set_title("throughput vs rate")
    for stat in ("p50", "p99"):
        ax2.plot(rates, [r["summary"]["ttft_ms"][stat] for r in stages], marker="o", label=f"TTFT {stat}")
    ax2.set_xlabel("offered rate (req/s)")
    ax2.set_ylabel("ms")
    ax2.legend()
    ax2.set_title("latency vs rate")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(doc: Mapping[str, Any], out_dir: Path, prefix: str = "bench") -> list[Path]:
    """All plots that apply to a run or sweep document; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if "runs" in doc:
        last = doc["runs"][-1]
        return [
            throughput_vs_rate(doc["runs"], out_dir / f"{prefix}-throughput-vs-rate.png"),
            latency_cdfs(last, out_dir / f"{prefix}-latency-cdf.png"),
            ttft_over_time(last, out_dir / f"{prefix}-ttft-over-time.png"),
        ]
    return [
        latency_cdfs(doc, out_dir / f"{prefix}-latency-cdf.png"),
        ttft_over_time(doc, out_dir / f"{prefix}-ttft-over-time.png"),
    ]
