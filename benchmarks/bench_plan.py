"""Planner fidelity: the performance model's TTFT, TPOT and throughput against measured vLLM runs.

Data: shared/reference/data/validation_aic_vllm_dense_h100_h200.csv, the 219 vLLM aggregated runs on
H100/H200 (Qwen3-32B BF16/FP8, Llama-3.1-70B FP8, Llama-3.1-8B FP8) from NVIDIA AIConfigurator's
silicon_sample.csv @095f58a5.
Llama-3.1-70B is predicted with the catalog's Llama-3.3-70B (identical config.json shapes).
Prints a table of representative runs and the median / mean absolute percentage error per model and GPU.
Run: `make bench ARGS=plan` or `.venv/bin/python -m benchmarks.run plan` (`--all` prints every row).
"""

from __future__ import annotations

import csv
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from eksinfer.catalog import get_gpu, get_model
from eksinfer.errors import InfeasibleError
from eksinfer.perf import build_engine_perf, predict_aggregated

DATA_CANDIDATES = (
    Path(__file__).resolve().parents[1] / "shared" / "reference" / "data",
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "data",
    Path("/work/shared/reference/data"),
)
CSV_NAME = "validation_aic_vllm_dense_h100_h200.csv"
SOURCE = "AIC silicon_sample.csv @095f58a5"
MODEL_MAP = {
    "Qwen/Qwen3-32B": "qwen3-32b",
    "meta-llama/Llama-3.1-70B": "llama-3.3-70b",
    "nvidia/Llama-3.1-8B-Instruct-FP8": "llama-3.1-8b",
}
GPU_MAP = {"h100_sxm": "H100", "h200_sxm": "H200"}
# Representative runs shown one by one: (model, system, tp, isl, osl, concurrency).
SHOWCASE = (
    ("Qwen/Qwen3-32B", "h100_sxm", 2, 1024, 1024, 8),
    ("Qwen/Qwen3-32B", "h100_sxm", 8, 1024, 1024, 128),
    ("Qwen/Qwen3-32B", "h100_sxm", 4, 4096, 512, 32),
    ("Qwen/Qwen3-32B", "h100_sxm", 2, 4096, 1024, 128),
    ("meta-llama/Llama-3.1-70B", "h100_sxm", 4, 1024, 1024, 16),
    ("meta-llama/Llama-3.1-70B", "h200_sxm", 1, 1024, 1024, 4),
    ("meta-llama/Llama-3.1-70B", "h200_sxm", 8, 8192, 1024, 64),
    ("nvidia/Llama-3.1-8B-Instruct-FP8", "h200_sxm", 1, 1024, 1024, 64),
)


@dataclass(frozen=True, slots=True)
class Row:
    model: str
    system: str
    precision: str
    tp: int
    isl: int
    osl: int
    concurrency: int
    ttft_ms: float
    tpot_ms: float
    tok_s: float


@dataclass(frozen=True, slots=True)
class Compared:
    row: Row
    ttft_ms: float
    tpot_ms: float
    tok_s: float

    def err(self, field: str) -> float:
        measured, predicted = getattr(self.row, field), getattr(self, field)
        return (predicted - measured) / measured * 100.0


def load_rows(path: Path | None = None) -> list[Row]:
    if path is None:
        path = next((d / CSV_NAME for d in DATA_CANDIDATES if (d / CSV_NAME).exists()), None)
        if path is None:
            raise FileNotFoundError(f"{CSV_NAME} not found under shared/reference/data")
    with path.open(newline="", encoding="utf-8") as fh:
        return [
            Row(
                r["model"],
                r["system"],
                r["precision"],
                int(r["tp"]),
                int(r["isl"]),
                int(r["osl"]),
                int(r["concurrency"]),
                float(r["ttft_ms"]),
                float(r["tpot_ms"]),
                float(r["derived_output_tok_s"]),
            )
            for r in csv.DictReader(fh)
        ]


def predict(row: Row) -> Compared | None:
    model, gpu = get_model(MODEL_MAP[row.model]), get_gpu(GPU_MAP[row.system])
    try:
        perf = build_engine_perf(
            model, gpu, tensor_parallel_size=row.tp, precision=row.precision, max_model_len=row.isl + row.osl
        )
    except InfeasibleError:
        return None
    point = predict_aggregated(perf, input_tokens=row.isl, output_tokens=row.osl, concurrency=row.concurrency)
    return Compared(row, point.ttft_s * 1e3, point.tpot_s * 1e3, point.output_tokens_per_s)


def compare_all(rows: list[Row]) -> list[Compared]:
    return [c for c in map(predict, rows) if c is not None]


def summary(compared: list[Compared]) -> dict[str, tuple[int, float, float, float, float]]:
    """Per group: (n, median |err| TTFT, median |err| TPOT, median |err| tok/s, mean |err| TPOT)."""
    groups: dict[str, list[Compared]] = {"all": compared}
    for c in compared:
        key = f"{MODEL_MAP[c.row.model]} {c.row.precision} {GPU_MAP[c.row.system]}"
        groups.setdefault(key, []).append(c)
    out = {}
    for key, items in groups.items():

        def med(field: str, items: list[Compared] = items) -> float:
            return statistics.median(abs(c.err(field)) for c in items)

        out[key] = (
            len(items),
            med("ttft_ms"),
            med("tpot_ms"),
            med("tok_s"),
            statistics.fmean(abs(c.err("tpot_ms")) for c in items),
        )
    return out


def _line(c: Compared) -> str:
    r = c.row
    name = f"{MODEL_MAP[r.model]} {r.precision}"
    return (
        f"{name:<18} {GPU_MAP[r.system]:<5} {r.tp:>2} {r.isl:>5}/{r.osl:<5} {r.concurrency:>4} "
        f"{r.ttft_ms:>9.1f} {c.ttft_ms:>9.1f} {c.err('ttft_ms'):>+7.1f}% "
        f"{r.tpot_ms:>7.2f} {c.tpot_ms:>7.2f} {c.err('tpot_ms'):>+7.1f}% "
        f"{r.tok_s:>8.0f} {c.tok_s:>8.0f} {c.err('tok_s'):>+7.1f}%"
    )


def main(argv: list[str]) -> None:
    started = time.perf_counter()
    compared = compare_all(load_rows())
    elapsed = time.perf_counter() - started
    header = (
        f"{'model':<18} {'GPU':<5} {'TP':>2} {'ISL/OSL':<11} {'conc':>4} "
        f"{'TTFT ms':>9} {'pred':>9} {'err':>8} {'TPOT ms':>7} {'pred':>7} {'err':>8} "
        f"{'tok/s':>8} {'pred':>8} {'err':>8}"
    )
    print(f"measured vLLM runs ({SOURCE}) vs eksinfer.perf predictions")
    print(header)
    shown = (
        compared
        if "--all" in argv
        else [
            c
            for c in compared
            if (c.row.model, c.row.system, c.row.tp, c.row.isl, c.row.osl, c.row.concurrency) in SHOWCASE
        ]
    )
    for c in shown:
        print(_line(c))
    print(f"\nmedian / mean absolute error over {len(compared)} runs (predicted in {elapsed * 1e3:.0f} ms)")
    print(f"{'group':<28} {'n':>4} {'TTFT med':>9} {'TPOT med':>9} {'tok/s med':>10} {'TPOT mean':>10}")
    for key, (n, ttft, tpot, tok, tpot_mean) in summary(compared).items():
        print(f"{key:<28} {n:>4} {ttft:>8.1f}% {tpot:>8.1f}% {tok:>9.1f}% {tpot_mean:>9.1f}%")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
