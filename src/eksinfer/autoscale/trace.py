"""Traffic traces for the what-if: read from JSONL or the Azure LLM inference CSV, or generated.

JSONL, one request a line (`arrival_s` seconds from the trace start; `timestamp` is taken as a synonym):

    {"arrival_s": 0.42, "input_tokens": 812, "output_tokens": 230, "prefix_group": 3, "prefix_tokens": 512}

`prefix_group` (optional) names a shared prompt prefix, e.g. a system prompt or a document, of
`prefix_tokens` tokens (default: half the prompt); requests of one group share those KV blocks.

Azure LLM inference traces (Azure/AzurePublicDataset, `AzureLLMInferenceTrace_{code,conv}.csv`, 2023 and
2024): columns `TIMESTAMP` (a date-time such as `2023-11-16 18:15:46.6805900`), `ContextTokens`,
`GeneratedTokens`; arrivals are taken relative to the first row. They carry no prefix information.

Generators (seeded, open-loop Poisson arrivals drawn by thinning, lengths log-normal around the means):
- diurnal: rate(t) = mean x (1 + amplitude x cos(2 pi (t - peak) / 24 h)), the day's peak at `peak_hour`;
- bursty: a base rate with bursts arriving on average every `burst_every_s`, each `burst_factor` times the
  base for an exponential duration of mean `burst_s`.
Bad input raises ConfigError naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from eksinfer.errors import ConfigError

DAY_S = 86_400.0
MAX_TRACE_REQUESTS = 5_000_000  # about 400 MB of requests in memory; refuse larger traces


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace; `prefix_group` < 0 means no shared prefix."""

    arrival_s: float
    input_tokens: int
    output_tokens: int
    prefix_group: int = -1
    prefix_tokens: int = 0


def _int_field(row: dict[str, object], name: str, where: str, minimum: int) -> int:
    value = row.get(name)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value != int(value)
        or value < minimum
    ):
        raise ConfigError(f"{where}: must be an integer >= {minimum}, got {value!r}", field=name)
    return int(value)


def _parse_json_line(line: str, where: str) -> TraceRequest:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: not JSON ({err.msg})", field="line") from None
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: must be a JSON object", field="line")
    key = "arrival_s" if "arrival_s" in row else "timestamp"
    arrival = row.get(key)
    if isinstance(arrival, bool) or not isinstance(arrival, int | float) or not math.isfinite(arrival):
        raise ConfigError(f"{where}: must be a number of seconds, got {arrival!r}", field="arrival_s")
    if arrival < 0:
        raise ConfigError(f"{where}: must be >= 0, got {arrival!r}", field="arrival_s")
    input_tokens = _int_field(row, "input_tokens", where, 1)
    output_tokens = _int_field(row, "output_tokens", where, 1)
    group = row.get("prefix_group")
    if group is None:
        return TraceRequest(float(arrival), input_tokens, output_tokens)
    if isinstance(group, bool) or not isinstance(group, int) or group < 0:
        raise ConfigError(f"{where}: must be an integer >= 0, got {group!r}", field="prefix_group")
    prefix = row.get("prefix_tokens", input_tokens // 2)
    prefix_tokens = _int_field({"prefix_tokens": prefix}, "prefix_tokens", where, 0)
    if prefix_tokens > input_tokens:
        raise ConfigError(f"{where}: {prefix_tokens} > input_tokens {input_tokens}", field="prefix_tokens")
    return TraceRequest(float(arrival), input_tokens, output_tokens, group, prefix_tokens)


def _azure_rows(lines: Iterator[str], source: str) -> list[TraceRequest]:
    reader = csv.DictReader(lines)
    missing = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} - set(reader.fieldnames or ())
    if missing:
        raise ConfigError(
            f"{source}: the Azure trace header lacks {', '.join(sorted(missing))}", field="header"
        )
    out: list[TraceRequest] = []
    first: datetime | None = None
    for n, row in enumerate(reader, start=2):
        where = f"{source} line {n}"
        stamp = (row.get("TIMESTAMP") or "").strip()
        try:
            # Python parses at most 6 fractional digits; the traces have 7
            head, _, frac = stamp.partition(".")
            when = datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}" if frac else head)
        except ValueError:
            raise ConfigError(f"{where}: not a date-time: {stamp!r}", field="TIMESTAMP") from None
        first = first or when
        values: dict[str, object] = {}
        for name in ("ContextTokens", "GeneratedTokens"):
            text = (row.get(name) or "").strip()
            values[name] = int(text) if text.isdigit() else text
        context = _int_field(values, "ContextTokens", where, 1)
        generated = _int_field(values, "GeneratedTokens", where, 1)
        out.append(TraceRequest((when - first).total_seconds(), context, generated))
        if len(out) > MAX_TRACE_REQUESTS:
            raise ConfigError(f"{source}: more than {MAX_TRACE_REQUESTS:,} requests", field="--trace")
    return out


def load_trace(path: Path) -> list[TraceRequest]:
    """JSONL or an Azure CSV (by the header), sorted by arrival; at least one request."""
    source = str(path)
    try:
        handle = path.open(encoding="utf-8", newline="")
    except OSError as err:
        raise ConfigError(f"cannot read {source}: {err.strerror}", field="--trace") from None
    with handle:
        try:
            head = handle.readline()
            if head.lstrip().startswith(("{", "[")) or not head.strip():
                out: list[TraceRequest] = []
                for n, line in enumerate([head, *handle], start=1):
                    if line.strip():
                        out.append(_parse_json_line(line, f"{source} line {n}"))
                    if len(out) > MAX_TRACE_REQUESTS:
                        raise ConfigError(
                            f"{source}: more than {MAX_TRACE_REQUESTS:,} requests", field="--trace"
                        )
            else:
                out = _azure_rows(iter([head, *handle]), source)
        except UnicodeDecodeError:
            raise ConfigError(f"{source}: not UTF-8 text", field="--trace") from None
    if not out:
        raise ConfigError(f"{source}: no requests", field="--trace")
    out.sort(key=lambda r: r.arrival_s)
    return out


def write_trace(requests: list[TraceRequest], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in requests:
            row: dict[str, object] = {
                "arrival_s": round(r.arrival_s, 6),
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
            }
            if r.prefix_group >= 0:
                row["prefix_group"] = r.prefix_group
                row["prefix_tokens"] = r.prefix_tokens
            f.write(json.dumps(row) + "\n")


@dataclass(frozen=True, slots=True)
class TraceShape:
    """What the generators draw: lengths, prefix sharing, duration."""

    duration_s: float = DAY_S
    input_tokens: int = 1024
    output_tokens: int = 256
    length_sigma: float = 0.5  # log-normal sigma of both lengths
    max_tokens: int = 8192  # input + output cap (the engine's max_model_len)
    prefix_share: float = 0.5  # share of requests that carry a shared prefix
    prefix_groups: int = 32  # distinct prefixes, drawn Zipf-like (group g with weight 1 / (g + 1))
    prefix_fraction: float = 0.5  # share of such a prompt that is the shared prefix
    seed: int = 0


def _lengths(rng: random.Random, shape: TraceShape, weights: list[float]) -> tuple[int, int, int, int]:
    def draw(mean: int) -> int:
        # log-normal with the given mean: mu = ln(mean) - sigma^2 / 2
        s = shape.length_sigma
        return max(1, round(rng.lognormvariate(math.log(mean) - s * s / 2, s)))

    inp = draw(shape.input_tokens)
    out = draw(shape.output_tokens)
    inp = min(inp, shape.max_tokens - 2)
    out = min(out, shape.max_tokens - inp)
    if rng.random() >= shape.prefix_share:
        return inp, out, -1, 0
    group = rng.choices(range(len(weights)), weights)[0]
    return inp, out, group, int(inp * shape.prefix_fraction)


def _thinned(rng: random.Random, shape: TraceShape, rate_max: float, rate: object) -> list[TraceRequest]:
    assert callable(rate)
    weights = [1.0 / (g + 1) for g in range(max(1, shape.prefix_groups))]
    out: list[TraceRequest] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate_max)
        if t >= shape.duration_s:
            return out
        if rng.random() * rate_max <= rate(t):
            inp, outp, group, prefix = _lengths(rng, shape, weights)
            out.append(TraceRequest(t, inp, outp, group, prefix))


def diurnal_trace(
    mean_requests_per_s: float, shape: TraceShape, *, amplitude: float = 0.6, peak_hour: float = 14.0
) -> list[TraceRequest]:
    """A day whose rate swings by +-`amplitude` around the mean (peak/mean = 1 + amplitude)."""
    if not 0 <= amplitude < 1:
        raise ConfigError("must be in [0, 1)", field="amplitude")
    rng = random.Random(shape.seed)
    peak_s = peak_hour * 3600.0

    def rate(t: float) -> float:
        return mean_requests_per_s * (1 + amplitude * math.cos(2 * math.pi * (t - peak_s) / DAY_S))

    return _thinned(rng, shape, mean_requests_per_s * (1 + amplitude), rate)


def bursty_trace(
    base_requests_per_s: float,
    shape: TraceShape,
    *,
    burst_factor: float = 3.0,
    burst_every_s: float = 3600.0,
    burst_s: float = 600.0,
) -> list[TraceRequest]:
    """A flat base rate with bursts of `burst_factor` x base, starting as a Poisson process."""
    rng = random.Random(shape.seed + 1)
    bursts: list[tuple[float, float]] = []
    t = rng.expovariate(1 / burst_every_s)
    while t < shape.duration_s:
        length = rng.expovariate(1 / burst_s)
        bursts.append((t, t + length))
        t += length + rng.expovariate(1 / burst_every_s)

    def rate(at: float) -> float:
        for start, end in bursts:
            if start <= at < end:
                return base_requests_per_s * burst_factor
            if start > at:
                break
        return base_requests_per_s

    return _thinned(rng, shape, base_requests_per_s * max(1.0, burst_factor), rate)


def rate_series(requests: list[TraceRequest], bin_s: float, duration_s: float) -> list[float]:
    """Arrivals per second in consecutive bins (for plots and the static-peak size)."""
    bins = [0.0] * max(1, math.ceil(duration_s / bin_s))
    for r in requests:
        i = min(int(r.arrival_s / bin_s), len(bins) - 1)
        bins[i] += 1
    return [b / bin_s for b in bins]
