"""Where the TTFT error lives: measured minus predicted TTFT, sliced by what could explain it.

`make bench ARGS="plan --residuals"` prints, for the calibration and held-out runs,
- the signed median TTFT error and the median residual (measured - predicted, ms) by vLLM version, GPU,
  tensor-parallel size, prompt length and prefill steps per request (a prompt longer than the step's token
  budget less the running decodes takes more than one step);
- for each campaign measured at several TP sizes with everything else fixed, the fit TTFT = a + b / TP of
  the measured and of the predicted runs: `a` is the part of TTFT that does not shrink with TP, `b` the part
  that does. An all-reduce costs c (TP - 1) / TP = c - c / TP, so it shows up as +c in `a` and -c in `b`:
  a TP sweep alone cannot tell a TP-invariant cost from an all-reduce, only a change of GPU (link speed)
  or of TP 1 (no all-reduce) can.
Nothing here is fitted into the model; it is the evidence behind the decisions in docs/planner.md.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol


class _Row(Protocol):
    model: str
    system: str
    precision: str
    tp: int
    isl: int
    osl: int
    concurrency: int
    ttft_ms: float
    version: str
    dp: int
    ep: bool


class _Compared(Protocol):
    @property
    def row(self) -> _Row: ...
    @property
    def ttft_ms(self) -> float: ...
    @property
    def kv_limited(self) -> bool: ...


STEP_TOKEN_BUDGET = 8192  # vLLM's default max_num_batched_tokens on >= 70 GiB GPUs (the runs record none)


def prefill_steps(isl: int, concurrency: int, budget: int = STEP_TOKEN_BUDGET) -> int:
    """Steps one prompt needs when the other running sequences each take one token of every step's budget."""
    return max(1, math.ceil(isl / max(1, budget - (concurrency - 1))))


def tp_fit(points: Iterable[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (a, b) of y = a + b / TP over (TP, y) points; needs two distinct TP sizes."""
    xs, ys = zip(*((1.0 / tp, y) for tp, y in points), strict=True)
    x_mean, y_mean = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - x_mean) ** 2 for x in xs)
    if spread == 0:
        raise ValueError("tp_fit needs at least two tensor-parallel sizes")
    b = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys, strict=True)) / spread
    return y_mean - b * x_mean, b


def slices(
    compared: Sequence[_Compared], key: Callable[[_Compared], object]
) -> list[tuple[str, int, float, float]]:
    """(slice, runs, signed median TTFT error %, median measured - predicted ms) per value of `key`;
    runs past the KV cache's capacity are left out (their TTFT is the wait for a slot, not the engine)."""
    groups: dict[str, list[_Compared]] = {}
    for c in compared:
        if not c.kv_limited:
            groups.setdefault(str(key(c)), []).append(c)
    out = []
    for name in sorted(groups):
        items = groups[name]
        signed = statistics.median((c.ttft_ms - c.row.ttft_ms) / c.row.ttft_ms * 100.0 for c in items)
        residual = statistics.median(c.row.ttft_ms - c.ttft_ms for c in items)
        out.append((name, len(items), signed, residual))
    return out


Fit = tuple[float, float]


def tp_sweeps(compared: Sequence[_Compared]) -> list[tuple[str, list[int], Fit, Fit]]:
    """(campaign, TP sizes, measured (a, b), predicted (a, b)) for every run set that differs only in TP."""
    groups: dict[tuple[object, ...], list[_Compared]] = {}
    for c in compared:
        r = c.row
        if c.kv_limited or r.dp > 1 or r.ep:
            continue
        key = (r.model, r.system, r.precision, r.version, r.isl, r.osl, r.concurrency)
        groups.setdefault(key, []).append(c)
    out = []
    for key, items in sorted(groups.items(), key=lambda kv: str(kv[0])):
        tps = sorted({c.row.tp for c in items})
        if len(tps) < 3:
            continue
        measured = tp_fit((c.row.tp, c.row.ttft_ms) for c in items)
        predicted = tp_fit((c.row.tp, c.ttft_ms) for c in items)
        model, system, precision, version, isl, osl, conc = key
        name = f"{model} {precision} {system} vLLM {version or '?'} {isl}/{osl} c{conc}"
        out.append((name, tps, measured, predicted))
    return out


def report(sets: Sequence[tuple[str, Sequence[_Compared]]], label: Callable[[_Row], str]) -> None:
    """Print the slices of each set and the TP sweeps of all of them."""
    keys: list[tuple[str, Callable[[_Compared], object]]] = [
        ("vLLM version", lambda c: c.row.version or "not recorded"),
        ("GPU", lambda c: c.row.system),
        ("TP", lambda c: f"{c.row.tp:>2}"),
        ("prompt tokens", lambda c: f"{c.row.isl:>5}"),
        ("prefill steps per prompt", lambda c: prefill_steps(c.row.isl, c.row.concurrency)),
        ("model, GPU, version", lambda c: f"{label(c.row)} {c.row.version or '?'}"),
    ]
    for title, items in sets:
        print(f"\nTTFT residuals, {title} ({len(items)} runs): signed median error, median measured - pred.")
        for heading, key in keys:
            print(f"  by {heading}")
            for name, n, signed, residual in slices(items, key):
                print(f"    {name:<40} {n:>4} {signed:>+7.1f}% {residual:>+8.1f} ms")
    print("\nTTFT = a + b / TP, measured vs predicted (ms), for runs that differ only in TP")
    every = [c for _, items in sets for c in items]
    for name, tps, (a, b), (pa, pb) in tp_sweeps(every):
        sizes = ",".join(map(str, tps))
        print(f"  {name:<78} TP {sizes:<8} a {a:>6.0f} / {pa:>6.0f}  b {b:>6.0f} / {pb:>6.0f}")
