"""Grid search of the dense step constants on the calibration set read as its runs ran: an exploration.

The constants in eksinfer/perf/engine.py were fitted on the 219 calibration runs with InferenceMAX's
Llama-70B campaign read as serial, BF16-cache runs at nominal lengths; that campaign ran vLLM 0.10.2 with an
FP8 cache and async scheduling at the client's mean lengths (bench_plan.llama_campaign_reading; docs/
planner.md "The calibration set read as it ran"). This script searches ETA_BW, the per-layer, per-step and
per-sequence overheads and decode attention's cost of reading the cache per dtype (KV_READ_COST_*) on that
reading, minimising the sum of the three median errors, and prints the best cells, how flat the optimum is
and the cell of today's constants. It changes nothing: a refit also moves the MoE families fitted on top
(benchmarks/fit_moe.py) and every band, and waits for that work.
Run: `.venv/bin/python -m benchmarks.fit_dense` (about a minute); `--as-fitted` for the earlier reading.
"""

from __future__ import annotations

import itertools
import sys

from benchmarks import bench_plan
from benchmarks.fit_moe import Medians, constants, medians
from eksinfer.perf import engine

NAMES = (
    "ETA_BW",
    "LAYER_OVERHEAD_S",
    "STEP_OVERHEAD_S",
    "SEQ_OVERHEAD_S",
    "KV_READ_COST_FP8",
    "KV_READ_COST_BF16",
)
GRID = (
    (0.8, 0.85, 0.9),
    (30e-6, 45e-6, 60e-6),
    (0.5e-3, 1e-3, 2e-3),
    (10e-6, 20e-6, 40e-6),
    (1.0, 2.0, 3.0, 4.0, 5.0),
    (1.0, 1.5, 2.0),
)
Cell = tuple[float, ...]


def search(rows: list[bench_plan.Row]) -> dict[Cell, Medians]:
    out = {}
    for cell in itertools.product(*GRID):
        with constants(NAMES, cell):
            out[cell] = medians(rows)
    return out


def _show(cell: Cell, m: Medians) -> str:
    bw, layer, step, seq, kv8, kv16 = cell
    return (
        f"ETA_BW {bw:<4} layer {layer * 1e6:3.0f} us  step {step * 1e3:3.1f} ms  seq {seq * 1e6:3.0f} us  "
        f"KV cost fp8 {kv8:<3} bf16 {kv16:<3}: TTFT {m[0]:5.1f}  TPOT {m[1]:5.1f}  tok/s {m[2]:5.1f}  "
        f"sum {sum(m):5.1f}"
    )


def main(argv: list[str]) -> None:
    rows = bench_plan.load_rows()
    if "--as-fitted" not in argv:
        rows = [bench_plan.llama_campaign_reading(r) for r in rows]
    now: Cell = tuple(float(getattr(engine, n)) for n in NAMES)
    with constants(NAMES, now):
        today = medians(rows)
    cells = search(rows)
    ranked = sorted(cells.items(), key=lambda kv: sum(kv[1]))
    reading = "as fitted" if "--as-fitted" in argv else "the Llama campaign as it ran"
    print(f"calibration set ({len(rows)} runs, {reading}); minimising median |err| TTFT + TPOT + tok/s")
    print(f"  today's constants: {_show(now, today)}")
    for cell, m in ranked[:10]:
        print(f"  {_show(cell, m)}")
    best = sum(ranked[0][1])
    for slack in (1.0, 2.0):
        near = [c for c, m in cells.items() if sum(m) <= best + slack]
        kv8 = sorted({c[4] for c in near})
        print(f"  within {slack:.0f} point(s) of the best: {len(near)} cells, KV cost fp8 {kv8[0]}-{kv8[-1]}")
    goals = bench_plan.GOALS["calibration"]
    meeting = [c for c, m in cells.items() if all(v <= g for v, g in zip(m, goals, strict=True))]
    limits = " / ".join(f"{g:.0f}" for g in goals)
    print(f"  cells meeting the calibration goals ({limits} %): {len(meeting)}")


if __name__ == "__main__":
    main(sys.argv[1:])
