"""Terminal output at the edge: the summary table and `bench compare` (rich tables built from result dicts).

Both read the JSON-shaped summary (`BenchResult.to_json()["summary"]` or a file), so a saved run and a live
one print the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rich.table import Table

LATENCIES = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"), ("e2e_ms", "E2E"))
STATS = ("mean", "p50", "p90", "p99")
RATES = (
    ("request_throughput", "requests/s"),
    ("output_throughput", "output tokens/s"),
    ("total_token_throughput", "total tokens/s"),
)


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _goodput(summary: Mapping[str, Any]) -> float | None:
    good = summary.get("goodput")
    return None if not good else good.get("req_per_s")


def summary_table(summary: Mapping[str, Any], title: str = "eksinfer bench") -> Table:
    """Latency rows (mean, P50, P90, P99 in ms), then throughput, goodput, errors and hit rate."""
    reqs = summary["requests"]
    caption = f"{reqs['completed']} ok, {reqs['failed']} failed in {_num(summary['duration_s'])} s"
    table = Table(title=title, caption=caption)
    table.add_column("metric")
    for stat in STATS:
        table.add_column(stat, justify="right")
    for key, name in LATENCIES:
        d = summary[key]
        table.add_row(f"{name} (ms)", *(_num(d.get(s)) for s in STATS))
    table.add_section()
    for key, name in RATES:
        table.add_row(name, _num(summary.get(key)), "", "", "")
    if summary.get("goodput"):
        slo = ", ".join(f"{k}<={v:g}" for k, v in summary["goodput"]["slo"].items() if v is not None)
        good = summary["goodput"]
        table.add_row(
            f"goodput req/s ({slo})", _num(good["req_per_s"]), f"{_num(good['fraction'] * 100, 1)} %"
        )
    hit = summary.get("hit_rate") or {}
    for key, name in (
        ("metrics", "KV hit rate (/metrics)"),
        ("cached_tokens", "KV hit rate (cached_tokens)"),
    ):
        if hit.get(key) is not None:
            table.add_row(name, f"{_num(hit[key] * 100, 1)} %", "", "", "")
    errors = summary.get("errors") or {}
    if errors:
        table.add_row("errors", ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())), "", "", "")
    lag = (summary.get("client") or {}).get("lag_ms") or {}
    table.add_row("client send lag (ms)", *(_num(lag.get(s), 3) for s in STATS))
    return table


def compare_rows(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """(name, A, B) for every latency statistic and rate both summaries carry."""
    rows: list[tuple[str, float | None, float | None]] = []
    for key, name in LATENCIES:
        for stat in STATS:
            rows.append((f"{name} {stat} (ms)", a[key].get(stat), b[key].get(stat)))
    for key, name in RATES:
        rows.append((name, a.get(key), b.get(key)))
    rows.append(("goodput req/s", _goodput(a), _goodput(b)))
    for key in ("metrics", "cached_tokens"):
        rows.append(
            (f"hit rate ({key})", (a.get("hit_rate") or {}).get(key), (b.get("hit_rate") or {}).get(key))
        )
    rows.append(("failed requests", a["requests"]["failed"], b["requests"]["failed"]))
    return rows


def ratio(a: float | None, b: float | None) -> float | None:
    """B / A, or None when either is missing or A is zero."""
    if a is None or b is None or math.isnan(a) or math.isnan(b) or a == 0:
        return None
    return b / a


def _cell(name: str, value: float | None) -> str:
    if name.startswith("hit rate") and value is not None:
        return f"{_num(value * 100, 1)} %"
    if name == "failed requests" and value is not None:
        return str(int(value))
    return _num(value)


def compare_table(a: Mapping[str, Any], b: Mapping[str, Any], name_a: str, name_b: str) -> Table:
    """A and B side by side with B/A (below 1 is better for latencies, above 1 for throughput)."""
    table = Table(title="eksinfer bench compare", caption="B/A: <1 is better for latency, >1 for throughput")
    table.add_column("metric")
    table.add_column(f"A {name_a}", justify="right")
    table.add_column(f"B {name_b}", justify="right")
    table.add_column("B/A", justify="right")
    for name, va, vb in compare_rows(a, b):
        r = ratio(va, vb)
        table.add_row(name, _cell(name, va), _cell(name, vb), "-" if r is None else f"{r:.3f}")
    return table
