"""Grid search of the fitted MoE kernel constants, each family on its own calibration set only.

Each kernel family's pair (expert-GEMM factor, seconds per MoE layer per step) is chosen on the runs that
took that family, minimising the sum of the three median absolute errors (TTFT, TPOT, tokens/s): Kimi
K2.5 INT4 on H200 (bench_plan.MOE_FIT) chooses MOE_GEMM_FACTOR / MOE_LAYER_OVERHEAD_S (Marlin), the B300
runs (bench_plan.B300_FIT) choose BLACKWELL_MOE_*, InferenceMAX's H100 / H200 gpt-oss runs MXFP4_W4A16_*,
its B200 runs MXFP4_FLASHINFER_*. No other run is predicted here, so nothing held out can steer the
choice. Prints, per family, the best cells and how flat the optimum is.
Run: `.venv/bin/python -m benchmarks.fit_moe`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from benchmarks import bench_plan
from eksinfer.perf import engine

FACTORS = (
    0.05,
    0.075,
    0.1,
    0.125,
    0.15,
    0.175,
    0.2,
    0.225,
    0.25,
    0.275,
    0.3,
    0.325,
    0.35,
    0.4,
    0.45,
    0.5,
    0.6,
    0.8,
    1.0,
)
OVERHEADS_US = tuple(range(0, 161, 5))
Rows = list[bench_plan.Row]


def _corpus_runs(keys: set[tuple[str, str, str]]) -> Callable[[], Rows]:
    """The vendored AIConfigurator runs of the (model, system, precision) keys a family is fitted on."""
    return lambda: [r for r in bench_plan.load_holdout() if (r.model, r.system, r.precision) in keys]


def _inferencemax_runs(*systems: str) -> Callable[[], Rows]:
    return lambda: [r for r in bench_plan.load_inferencemax() if r.system in systems]


FAMILIES: dict[str, tuple[tuple[str, str], Callable[[], Rows]]] = {
    "default": (("MOE_GEMM_FACTOR", "MOE_LAYER_OVERHEAD_S"), _corpus_runs({bench_plan.MOE_FIT})),
    "blackwell": (
        ("BLACKWELL_MOE_GEMM_FACTOR", "BLACKWELL_MOE_LAYER_OVERHEAD_S"),
        _corpus_runs(bench_plan.B300_FIT),
    ),
    "mxfp4_w4a16": (
        ("MXFP4_W4A16_GEMM_FACTOR", "MXFP4_W4A16_LAYER_OVERHEAD_S"),
        _inferencemax_runs("h100_sxm", "h200_sxm"),
    ),
    "mxfp4_flashinfer": (
        ("MXFP4_FLASHINFER_GEMM_FACTOR", "MXFP4_FLASHINFER_LAYER_OVERHEAD_S"),
        _inferencemax_runs("b200_sxm"),
    ),
}
Medians = tuple[float, float, float]
# A fitted constant keeps its value while its cell is within this many points of the best: the grid's
# optimum is flat (see the "within" lines), and moving on noise would move every prediction that uses it.
KEEP_WITHIN = 1.0


@contextmanager
def constants(names: tuple[str, ...], values: tuple[float, ...]) -> Iterator[None]:
    """Set engine constants for the engines built inside the block, and put them back after."""
    saved = tuple(getattr(engine, n) for n in names)
    for name, value in zip(names, values, strict=True):
        setattr(engine, name, value)
    try:
        yield
    finally:
        for name, value in zip(names, saved, strict=True):
            setattr(engine, name, value)


def medians(rows: list[bench_plan.Row]) -> Medians:
    compared = bench_plan.compare_all(rows)
    assert len(compared) == len(rows), "every calibration run must be predictable"
    ttft, tpot, tok = (
        statistics.median(abs(c.err(f)) for c in compared) for f in ("ttft_ms", "tpot_ms", "tok_s")
    )
    return ttft, tpot, tok


def grid(names: tuple[str, str], rows: list[bench_plan.Row]) -> dict[tuple[float, int], Medians]:
    out = {}
    for factor in FACTORS:
        for overhead in OVERHEADS_US:
            with constants(names, (factor, overhead * 1e-6)):
                out[factor, overhead] = medians(rows)
    return out


def main() -> None:
    for family, (names, runs) in FAMILIES.items():
        mine = runs()
        systems = sorted({r.system for r in mine})
        cells = grid(names, mine)
        ranked = sorted(cells.items(), key=lambda kv: sum(kv[1]))
        (best_f, best_o), best = ranked[0]
        now = (getattr(engine, names[0]), round(getattr(engine, names[1]) * 1e6))
        print(
            f"\n{family}: {len(mine)} runs ({', '.join(systems)}); "
            "objective = sum of median |err| TTFT + TPOT + tok/s"
        )
        print(
            f"  engine now: factor {now[0]}, {now[1]} us -> "
            f"{' / '.join(f'{m:.1f}' for m in cells.get(now, best))} %"
        )
        for (factor, overhead), m in ranked[:8]:
            print(
                f"  factor {factor:<6} {overhead:>4} us: TTFT {m[0]:5.1f}  TPOT {m[1]:5.1f}  "
                f"tok/s {m[2]:5.1f}  sum {sum(m):6.1f}"
            )
        for slack in (1.0, 2.0, 5.0):
            near = [k for k, m in cells.items() if sum(m) <= sum(best) + slack]
            fs = sorted({k[0] for k in near})
            os_ = sorted({k[1] for k in near})
            print(
                f"  within {slack:.0f} point(s) of the best ({len(near)} cells): factor {fs[0]}-{fs[-1]}, "
                f"{os_[0]}-{os_[-1]} us"
            )
        print(f"  best: factor {best_f}, {best_o} us")
        kept = now in cells and sum(cells[now]) <= sum(best) + KEEP_WITHIN
        print(
            f"  {'keep the engine constants' if kept else 'move to the best cell'} (rule: keep while within "
            f"{KEEP_WITHIN:.0f} point of the best)"
        )


if __name__ == "__main__":
    main()
