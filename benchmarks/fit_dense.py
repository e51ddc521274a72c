"""Grid search of the dense step constants on the calibration set, each run read as it ran.

Chooses ETA_BW, the per-layer, per-step and per-sequence overheads, decode attention's cache-read cost
(KV_READ_COST) and vLLM 0.10's FP8-cache decode factor (SLOW_FP8_KV_DECODE) in eksinfer/perf/engine.py on the
219 calibration runs alone (InferenceMAX's Llama-70B campaign with its FP8 cache and async scheduling at the
client's mean lengths: bench_plan.llama_campaign_reading), minimising the sum of the three median errors, by
the rule benchmarks/fit_moe.py states: the constants keep their values while their cell is within 1 point of
the best. The MoE families are fitted on top of these (benchmarks/fit_moe.py), so a move here reruns that.
Run: `.venv/bin/python -m benchmarks.fit_dense` (about a minute).
"""

from __future__ import annotations

import itertools

from benchmarks import bench_plan
from benchmarks.fit_moe import KEEP_WITHIN, Medians, constants, medians
from eksinfer.perf import engine

NAMES = (
    "ETA_BW",
    "LAYER_OVERHEAD_S",
    "STEP_OVERHEAD_S",
    "SEQ_OVERHEAD_S",
    "KV_READ_COST",
    "SLOW_FP8_KV_DECODE",
)
GRID = (
    (0.8, 0.85, 0.9, 0.95),
    (30e-6, 45e-6, 60e-6),
    (0.5e-3, 1e-3, 2e-3),
    (20e-6, 40e-6, 60e-6),
    (1.0, 1.25, 1.5, 1.75, 2.0),
    (1.0, 2.0, 2.5, 3.0, 3.5, 4.0),
)
Cell = tuple[float, ...]


def search(rows: list[bench_plan.Row]) -> dict[Cell, Medians]:
    out = {}
    for cell in itertools.product(*GRID):
        with constants(NAMES, cell):
            out[cell] = medians(rows)
    return out


def _show(cell: Cell, m: Medians) -> str:
    bw, layer, step, seq, kv, slow = cell
    return (
        f"ETA_BW {bw:<4} layer {layer * 1e6:3.0f} us  step {step * 1e3:3.1f} ms  seq {seq * 1e6:3.0f} us  "
        f"KV read cost {kv:<4} slow FP8 {slow:<3}: TTFT {m[0]:5.1f}  TPOT {m[1]:5.1f}  tok/s {m[2]:5.1f}  "
        f"sum {sum(m):5.1f}"
    )


def main() -> None:
    rows = bench_plan.load_rows()
    now: Cell = tuple(float(getattr(engine, n)) for n in NAMES)
    with constants(NAMES, now):
        today = medians(rows)
    cells = search(rows)
    ranked = sorted(cells.items(), key=lambda kv: sum(kv[1]))
    print(f"calibration set ({len(rows)} runs, as they ran); minimising median |err| TTFT + TPOT + tok/s")
    print(f"  engine now: {_show(now, today)}")
    for cell, m in ranked[:10]:
        print(f"  {_show(cell, m)}")
    best = sum(ranked[0][1])
    for slack in (1.0, 2.0):
        near = [c for c, m in cells.items() if sum(m) <= best + slack]
        spans = (f"{n} {min(c[i] for c in near):g}-{max(c[i] for c in near):g}" for i, n in enumerate(NAMES))
        print(f"  within {slack:.0f} point(s) of the best: {len(near)} cells, " + ", ".join(spans))
    kept = sum(today) <= best + KEEP_WITHIN
    print(
        f"  {'keep the engine constants' if kept else 'move to the best cell'} "
        f"(rule: keep while within {KEEP_WITHIN:.0f} point of the best)"
    )


if __name__ == "__main__":
    main()
