"""BenchResult: the per-request records plus the summary every report, plot and comparison reads.

Aggregates (as `vllm bench serve` computes them, over the measured phase only; warm-up is excluded):
  duration_s          first measured send to the end of the last measured response
  request_throughput  completed requests / duration_s
  output_throughput   Σ output_tokens of completed requests / duration_s
  goodput             requests meeting every given SLO / duration_s (vLLM --goodput; a request with at most
                      one output token counts TPOT 0, as vLLM does); null when no SLO is given
  ttft/tpot/itl/e2e   mean, p50, p90, p99 in ms over completed requests (ITL pools every chunk gap)
  client.lag_ms       how late each request left against its scheduled send time; large values mean the
                      client, not the server, was the bottleneck
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eksinfer import untrusted
from eksinfer.bench.client import RequestRecord
from eksinfer.bench.config import BenchSlo
from eksinfer.bench.stats import describe, nan_to_none
from eksinfer.errors import ConfigError

SCHEMA = "eksinfer.bench/v1"


def _ms(values: list[float]) -> dict[str, float]:
    return describe(v * 1000.0 for v in values)


def is_good(rec: RequestRecord, slo: BenchSlo) -> bool:
    """Meets every SLO that is set (vLLM's goodput rule)."""
    if not rec.ok:
        return False
    if slo.ttft_ms is not None and (rec.ttft_s is None or rec.ttft_s * 1000 > slo.ttft_ms):
        return False
    if slo.tpot_ms is not None and (rec.tpot_s or 0.0) * 1000 > slo.tpot_ms:
        return False
    return not (slo.e2e_ms is not None and (rec.e2e_s is None or rec.e2e_s * 1000 > slo.e2e_ms))


def summarize(records: list[RequestRecord], slo: BenchSlo) -> dict[str, Any]:
    """The summary dict of the measured (non-warm-up) records."""
    measured = [r for r in records if not r.warmup and r.error != "cancelled"]
    ok = [r for r in measured if r.ok]
    ends = [r.sent_s + (r.e2e_s or 0.0) for r in measured]
    start = min((r.sent_s for r in measured), default=0.0)
    duration = max(ends, default=0.0) - start
    per_s = (lambda n: n / duration) if duration > 0 else (lambda n: math.nan)
    out_tokens = sum(r.output_tokens for r in ok)
    prompt_known = [r for r in ok if r.prompt_tokens is not None]
    cached_known = [r for r in ok if r.cached_tokens is not None and r.prompt_tokens]
    slo_set = any(v is not None for v in slo.model_dump().values())
    good = sum(1 for r in ok if is_good(r, slo))
    cached_prompt = sum(r.prompt_tokens or 0 for r in cached_known)
    return {
        "requests": {"completed": len(ok), "failed": len(measured) - len(ok), "total": len(measured)},
        "duration_s": duration,
        "ttft_ms": _ms([r.ttft_s for r in ok if r.ttft_s is not None]),
        "tpot_ms": _ms([t for r in ok if (t := r.tpot_s) is not None]),
        "itl_ms": _ms([g for r in ok for g in r.itl_s]),
        "e2e_ms": _ms([r.e2e_s for r in ok if r.e2e_s is not None]),
        "request_throughput": per_s(len(ok)),
        "output_throughput": per_s(out_tokens),
        "total_token_throughput": per_s(out_tokens + sum(r.prompt_tokens or 0 for r in prompt_known))
        if prompt_known
        else math.nan,
        "output_tokens": out_tokens,
        "goodput": {
            "req_per_s": per_s(good),
            "fraction": good / len(ok) if ok else math.nan,
            "slo": slo.model_dump(),
        }
        if slo_set
        else None,
        "errors": dict(Counter(r.error for r in measured if r.error)),
        "hit_rate": {
            "metrics": None,
            "cached_tokens": sum(r.cached_tokens or 0 for r in cached_known) / cached_prompt
            if cached_prompt
            else None,
        },
        "client": {"lag_ms": _ms([max(0.0, r.sent_s - r.scheduled_s) for r in measured])},
        "per_target": _per_target(measured),
    }


def _per_target(measured: list[RequestRecord]) -> dict[str, dict[str, Any]]:
    """Counts and latency percentiles per target URL (several targets: compare engines in one run)."""
    out: dict[str, dict[str, Any]] = {}
    for target in sorted({r.target for r in measured}):
        mine = [r for r in measured if r.target == target]
        ok = [r for r in mine if r.ok]
        out[target] = {
            "completed": len(ok),
            "failed": len(mine) - len(ok),
            "ttft_ms": _ms([r.ttft_s for r in ok if r.ttft_s is not None]),
            "e2e_ms": _ms([r.e2e_s for r in ok if r.e2e_s is not None]),
        }
    return out


@dataclass
class BenchResult:
    """One run: its config, summary and every request (warm-up ones flagged)."""

    config: dict[str, Any]
    records: list[RequestRecord]
    summary: dict[str, Any]
    started_at: str = ""
    interrupted: bool = False
    metrics_scrape: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def to_json(self) -> dict[str, Any]:
        """The output file: summary plus every request's timings in ms (standard JSON, NaN as null)."""
        reqs = []
        for r in self.records:
            d = asdict(r)
            d.pop("text")
            for key in ("scheduled_s", "sent_s", "ttft_s", "last_token_s", "e2e_s"):
                v = d.pop(key)
                d[key[:-2] + "_ms"] = None if v is None else round(v * 1000.0, 4)
            d["itl_ms"] = [round(g * 1000.0, 4) for g in d.pop("itl_s")]
            tpot = r.tpot_s
            d["tpot_ms"] = None if tpot is None else round(tpot * 1000.0, 4)
            reqs.append(d)
        doc = {
            "schema": SCHEMA,
            "label": self.label,
            "started_at": self.started_at,
            "interrupted": self.interrupted,
            "config": self.config,
            "summary": self.summary,
            "metrics_scrape": self.metrics_scrape,
            "requests": reqs,
        }
        return nan_to_none(doc)  # type: ignore[return-value]

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")


def load_result(path: Path) -> dict[str, Any]:
    """A result file written by `BenchResult.write` (or a sweep file), or a one-line ConfigError."""
    # results keep every request's record: allow 16x the usual file limit (256 MiB)
    text = untrusted.read_text(path, field=None, max_bytes=untrusted.MAX_FILE_BYTES * 16)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(doc, dict) or ("summary" not in doc and "runs" not in doc):
        raise ConfigError(f"{path}: not an eksinfer bench result (no 'summary')")
    return doc
