"""Which measured runs a plan stands on, and how far its predictions may be off (the plan's `ground`).

The performance model is fitted on vLLM aggregated, tensor-parallel runs of dense models on H100/H200, of
Kimi K2.5 on H200 (Marlin MoE kernels), of MoE models on B300 (Blackwell FP8 / FP4 MoE kernels) and of
gpt-oss-120b from InferenceMAX (MXFP4 MoE kernels: Marlin on Hopper, FlashInfer MXFP4 x MXFP8 on B200;
benchmarks/data/). A plan on any other path carries a warning and a wider band.

A band is the range the measured value is expected in, as factors on the prediction: the 10th and 90th
percentile of measured / predicted over a set of runs (`make bench ARGS=plan` prints their medians):
    calibrated   the 219 calibration runs (InferenceMAX's Llama-70B campaign read as it ran: vLLM 0.10.2
                 with an FP8 cache and async scheduling), widened by the 594 held-out runs with async
                 scheduling, the engine the renderer deploys (vLLM >= 0.14)
    held out     the 419 held-out B200 runs (Llama-3.1-70B FP8 / FP4, Kimi K2.5, MiniMax-M2.5, gpt-oss-120b)
    DP + EP      the 27 one-node DP runs (MiniMax-M2.5 NVFP4 DP 2 + EP on B200 / B300, Qwen3-235B DP 2 / 4
                 on H200), widened by the unmeasured judgement
    unmeasured   no runs at all: a stated judgement, wide on purpose, not a fit
Every count is of distinct runs: a run the corpus imports more than once counts once
(benchmarks/bench_plan.py distinct_runs). Several paths combine by taking the widest low and high factor
per metric.
"""

from __future__ import annotations

from dataclasses import dataclass

from eksinfer.catalog import get_gpu
from eksinfer.perf.engine import blackwell_moe
from eksinfer.planner.request import PlanRequest
from eksinfer.planner.search import Candidate

Factors = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Band:
    """(low, high) factors on the predicted TTFT, TPOT and output tokens/s."""

    ttft: Factors
    tpot: Factors
    tokens: Factors

    def widen(self, other: Band) -> Band:
        def w(a: Factors, b: Factors) -> Factors:
            return (min(a[0], b[0]), max(a[1], b[1]))

        return Band(w(self.ttft, other.ttft), w(self.tpot, other.tpot), w(self.tokens, other.tokens))


# Bands below as of the dense refit of 2026-12-04 (docs/planner.md "The calibration set read as it ran").
# The 219 calibration runs (vLLM 0.12 serial host work; the Llama-70B campaign 0.10.2, async, FP8 cache)
_CALIBRATION_RUNS = Band(ttft=(0.83, 1.4), tpot=(0.54, 1.09), tokens=(0.92, 1.82))  # rounded outward
# the 594 held-out runs with async scheduling (Llama-70B 0.10.2, Kimi K2.5 B200, MiniMax-M2.5 and gpt-oss
# on vLLM 0.15-0.19), InferenceX's runs read as they ran (benchmarks/bench_plan.py inferencex_reading)
_ASYNC_RUNS = Band(ttft=(0.85, 1.69), tpot=(0.86, 1.21), tokens=(0.83, 1.2))  # rounded outward
CALIBRATED = _CALIBRATION_RUNS.widen(_ASYNC_RUNS)
# the 419 held-out B200 runs
HELD_OUT = Band(ttft=(0.83, 1.76), tpot=(0.91, 1.22), tokens=(0.83, 1.15))  # rounded outward
# judgements for paths with no runs (see `_unmeasured`)
NO_RUNS = Band(ttft=(0.5, 2.0), tpot=(0.67, 1.5), tokens=(0.5, 1.5))
# g-family: published L4 / L40S / A10G runs come out 20-60 % slower than the model predicts (issue 18),
# so the measured value sits at or below the prediction for throughput
G_FAMILY = Band(ttft=(0.9, 2.5), tpot=(0.9, 2.5), tokens=(0.4, 1.1))
# MIG slices are modelled as 1/7 of the SMs and bandwidth per g; no run checks it
MIG = Band(ttft=(0.67, 1.5), tpot=(0.67, 1.5), tokens=(0.67, 1.5))
# DP attention: the 27 one-node DP runs of the corpus: 8 MiniMax-M2.5 NVFP4 DP 2 + EP (TP 1) runs on B200 /
# B300 at 256-2048 users (InferenceX's dp-attn entries; vLLM 0.19) and 19 Qwen3-235B DP 2 / 4 runs without
# EP on H200 (vLLM 0.12). Until 2026-12-04 this band stood on 36 "DP 2 + EP" MiniMax runs that were TP 2 +
# EP runs in the import's encoding. Widened by the no-runs judgement: DP 4 / 8 with EP and Hopper DP + EP
# have no runs
DP_EP_RUNS = Band(ttft=(0.64, 3.14), tpot=(0.8, 1.23), tokens=(0.79, 1.22))  # rounded outward
DP_EP = DP_EP_RUNS.widen(NO_RUNS)
# the 156 held-out gpt-oss-120b runs of the AIConfigurator corpus (InferenceX's runs of vLLM 0.11-0.18:
# Marlin W4A16 on H100 / H200, MXFP4 x MXFP8 on B200, the path plans deploy there), with the MXFP4
# constants fitted on InferenceX's earlier run (engine.MXFP4_*)
GPT_OSS = Band(ttft=(0.78, 1.37), tpot=(0.88, 1.17), tokens=(0.85, 1.12))  # rounded outward
# FP8 KV: capacity is exact arithmetic; decode reads half the bytes. The 150 held-out FP8-cache runs of the
# releases plans deploy (vLLM 0.15-0.19, all Blackwell: NVFP4 Kimi K2.5 and MiniMax-M2.5, gpt-oss) ...
FP8_KV_RUNS = Band(ttft=(0.78, 1.82), tpot=(0.91, 1.2), tokens=(0.83, 1.1))  # rounded outward
# ... and on Hopper, whose only FP8-cache runs are vLLM 0.10.2's (engine.SLOW_FP8_KV_DECODE), a judgement
FP8_KV_HOPPER = FP8_KV_RUNS.widen(Band(ttft=(0.8, 1.3), tpot=(0.8, 1.3), tokens=(0.8, 1.25)))

CALIBRATED_GPUS = ("H100", "H200")
HELD_OUT_GPUS = ("B200",)
MOE_FIT = ("kimi-k2.5", "H200")
# the GPU whose runs (FP8 / NVFP4 MoE: MiniMax-M2.5, Kimi K2.5) fitted the Blackwell MoE kernels
BLACKWELL_MOE_FIT_GPUS = ("B300",)


@dataclass(frozen=True, slots=True)
class Ground:
    measured: bool  # False when any part of the path has no measured run behind it
    basis: str
    warnings: tuple[str, ...]
    band: Band


def _unmeasured(request: PlanRequest, cand: Candidate) -> list[tuple[str, Band]]:
    s, model = cand.shape, request.model
    out: list[tuple[str, Band]] = []
    if s.dp > 1:
        out.append((
            f"DP {s.dp} attention + expert parallelism: 27 measured DP runs (MiniMax-M2.5 NVFP4 DP 2 + EP on"
            " B200 / B300 at 256-2048 users, Qwen3-235B DP 2 / 4 on H200) hold TPOT within x0.80-x1.23 of the"
            " prediction (10th-90th percentile) and TTFT within x0.64-x3.1; DP 4 / 8 with EP and Hopper"
            " DP + EP have no runs",
            DP_EP,
        ))  # fmt: skip
    if s.pp > 1:
        out.append(
            ("pipeline parallelism across nodes: no measured PP run (EFA hand-offs modelled)", NO_RUNS)
        )
    if s.mode == "disaggregated":
        out.append(("prefill/decode disaggregation: AIC rate matching, no measured P/D run", NO_RUNS))
    if s.mig_profile:
        out.append((f"MIG {s.mig_profile}: slice speed assumed proportional to its SMs, unmeasured", MIG))
    gpu = s.instance.gpu
    if s.instance.family.startswith("g"):
        out.append((f"{gpu} (g-family): no calibration runs; published runs are 20-60 % slower", G_FAMILY))
    elif gpu in BLACKWELL_MOE_FIT_GPUS and not (model.is_moe and blackwell_moe(get_gpu(gpu), s.precision)):
        out.append((f"{gpu}: measured runs are FP8 / NVFP4 MoE only (MiniMax-M2.5, Kimi K2.5)", NO_RUNS))
    elif gpu not in CALIBRATED_GPUS + HELD_OUT_GPUS + BLACKWELL_MOE_FIT_GPUS:
        out.append((f"{gpu}: no measured runs on this GPU", NO_RUNS))
    if s.precision == "mxfp4":
        out.append((
            "MXFP4 experts (gpt-oss): constants fitted on one InferenceX run (vLLM 0.13); held out on its "
            "later runs (vLLM 0.15-0.18): median error TTFT / TPOT 8 / 8 % on H100 and H200 (Marlin W4A16; "
            "vLLM's default triton_kernels path, which a Hopper plan deploys, has no runs), 10 / 5 % on B200 "
            "(MXFP8 activations, as the plan deploys)",
            GPT_OSS.widen(NO_RUNS),
        ))  # fmt: skip
    if s.precision == "fp4" and not model.is_moe:
        out.append((
            "FP4 weights: none fitted, dense FP4 GEMMs at the FP8 efficiency (held out on B200: Llama-3.1-70B"
            " NVFP4 TPOT 9 % off, TTFT 30 %)",
            NO_RUNS,
        ))  # fmt: skip
    if model.is_moe and (model.id, gpu) != MOE_FIT:
        out.append((
            "MoE: expert constants fitted on Kimi K2.5 INT4 H200 (Marlin / Hopper kernels) and on B300 runs"
            " (Blackwell FP8 / FP4 kernels); held out, median TPOT / TTFT error: Qwen3-235B H200 (vLLM 0.12)"
            " 9 / 14 %, MiniMax-M2.5 and Kimi K2.5 on B200 8 / 17 % (Kimi NVFP4 TTFT 37 %), MiniMax-M2.5"
            " H100 19 / 13 %, H200 13 / 28 %",
            HELD_OUT.widen(NO_RUNS),
        ))  # fmt: skip
    if s.kv_cache_dtype == "fp8":
        if get_gpu(gpu).fp4_tflops:
            out.append((
                "FP8 KV cache: capacity exact; 150 held-out FP8-cache runs on Blackwell (vLLM 0.15-0.19) hold"
                " TPOT within x0.91-x1.20 of the prediction (10th-90th percentile)",
                FP8_KV_RUNS,
            ))  # fmt: skip
        else:
            out.append((
                "FP8 KV cache: capacity exact; off Blackwell the only FP8-cache runs are vLLM 0.10.2's on"
                " H100 / H200 (slower FP8 decode, charged for that release only), not a release plans deploy",
                FP8_KV_HOPPER,
            ))  # fmt: skip
    return out


def assess(request: PlanRequest, cand: Candidate) -> Ground:
    """The plan's footing: calibrated, held out (B200), or unmeasured with the reasons, and its band."""
    band = CALIBRATED
    gpu = cand.shape.instance.gpu
    basis = "calibrated: vLLM aggregated TP runs on H100/H200 (benchmarks/data)"
    if gpu in HELD_OUT_GPUS:
        band = band.widen(HELD_OUT)
        basis = "held out: B200 runs the model was checked on, not fitted to"
    unmeasured = _unmeasured(request, cand)
    for _, extra in unmeasured:
        band = band.widen(extra)
    warnings = tuple(text for text, _ in unmeasured)
    if warnings:
        basis = "UNMEASURED GROUND: " + "; ".join(warnings)
    return Ground(measured=not warnings, basis=basis, warnings=warnings, band=band)
