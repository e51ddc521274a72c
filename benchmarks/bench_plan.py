"""Planner fidelity: the performance model's TTFT, TPOT and throughput against measured vLLM runs.

Data (vendored in benchmarks/data/, source and licence in its README): the 219 vLLM aggregated runs on
H100/H200 (Qwen3-32B BF16/FP8, Llama-3.1-70B FP8, Llama-3.1-8B FP8) the dense constants are fitted on, and
the MoE and B200 runs, from NVIDIA AIConfigurator's silicon_sample.csv @095f58a5, and the InferenceMAX
gpt-oss runs that fit the MXFP4 kernels (a second source). Calibration and held-out medians are printed
separately.
Llama-3.1-70B is predicted with the catalog's Llama-3.3-70B (identical config.json shapes).
Prints a table of representative runs and the median / mean absolute percentage error per model and GPU.
Run: `make bench ARGS=plan` or `.venv/bin/python -m benchmarks.run plan` (`--all` prints every row,
`--residuals` where the TTFT error lives: benchmarks/ttft_residuals.py).
"""

from __future__ import annotations

import csv
import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import ttft_residuals
from eksinfer.catalog import ModelSpec, get_gpu, get_model
from eksinfer.catalog.models import parse_hf_config
from eksinfer.errors import InfeasibleError
from eksinfer.perf import build_engine_perf, predict_aggregated
from eksinfer.perf.engine import deepgemm_pads_moe, slow_fp8_kv_decode, vllm_release

DATA = Path(__file__).resolve().parent / "data"
CSV_NAME = "aic_vllm_agg_dense_h100_h200.csv"
SOURCE = "AIC silicon_sample.csv @095f58a5"
SAMPLE_NAMES = (
    "aic_vllm_agg_moe_b200.csv",
    "aic_vllm_agg_holdout_more.csv",
    "aic_vllm_agg_holdout_fp4_moe.csv",
    "aic_vllm_agg_b300_fit.csv",
    "aic_vllm_agg_holdout_gpt_oss.csv",
    "aic_vllm_agg_inferencex_tp_ep.csv",
)
MODEL_MAP = {
    "Qwen/Qwen3-32B": "qwen3-32b",
    "meta-llama/Llama-3.1-70B": "llama-3.3-70b",
    "nvidia/Llama-3.1-8B-Instruct-FP8": "llama-3.1-8b",
    "Qwen/Qwen3-235B-A22B-FP8": "qwen3-235b-a22b",
    "moonshotai/Kimi-K2.5": "kimi-k2.5",
    "MiniMaxAI/MiniMax-M2.5": "minimax-m2.5",
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "openai/gpt-oss-120b": "gpt-oss-120b",
}
# The corpus labels gpt-oss-120b's runs fp4 / nvfp4, but they serve openai/gpt-oss-120b itself, whose routed
# experts are MXFP4 (its config.json: quant_method mxfp4): a different format (E8M0 scale per 32) and kernels
CORPUS_PRECISION = {("openai/gpt-oss-120b", "fp4"): "mxfp4"}
# Not a catalog model: the config.json fields of MiniMaxAI/MiniMax-M2.5 (MiniMaxM2ForCausalLM, shared with
# MiniMax-M2; native FP8), 228.7B total / 10.4B active as counted, against the card's 229B / 10B.
MINIMAX_M2_5 = {
    "architectures": ["MiniMaxM2ForCausalLM"], "model_type": "minimax_m2", "vocab_size": 200064,
    "hidden_size": 3072, "intermediate_size": 1536, "num_hidden_layers": 62, "num_attention_heads": 48,
    "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 196608, "num_local_experts": 256,
    "num_experts_per_tok": 8, "tie_word_embeddings": False, "quantization_config": {"quant_method": "fp8"},
}  # fmt: skip


def model_spec(name: str) -> ModelSpec:
    if name == "MiniMaxAI/MiniMax-M2.5":
        return parse_hf_config(MINIMAX_M2_5, model_id="minimax-m2.5", hf_id=name)
    return get_model(MODEL_MAP[name])


GPU_MAP = {"h100_sxm": "H100", "h200_sxm": "H200", "b200_sxm": "B200", "b300_sxm": "B300"}
# Beyond the validation csv: vLLM aggregated runs, TP only, of other GPUs and the MoE models. Kimi K2.5 on
# H200 fitted the two MoE constants (MOE_GEMM_FACTOR, MOE_LAYER_OVERHEAD_S); the rest was never used to fit.
MOE_FIT = ("moonshotai/Kimi-K2.5", "h200_sxm", "int4")
# Blackwell FP8 / NVFP4 MoE kernels: every B300 vLLM release run fits their two constants
# (engine.BLACKWELL_MOE_GEMM_FACTOR, BLACKWELL_MOE_LAYER_OVERHEAD_S); chosen before any B300 run was predicted
B300_FIT = {
    ("MiniMaxAI/MiniMax-M2.5", "b300_sxm", "fp8"),
    ("MiniMaxAI/MiniMax-M2.5", "b300_sxm", "fp4"),
    ("moonshotai/Kimi-K2.5", "b300_sxm", "fp4"),
}
HOLDOUT = {
    ("meta-llama/Llama-3.1-70B", "b200_sxm", "fp8"),
    ("meta-llama/Llama-3.1-70B", "b200_sxm", "fp4"),
    ("Qwen/Qwen3-235B-A22B-FP8", "h200_sxm", "fp8"),
    ("moonshotai/Kimi-K2.5", "h200_sxm", "int4"),
    ("moonshotai/Kimi-K2.5", "b200_sxm", "int4"),
    ("MiniMaxAI/MiniMax-M2.5", "h200_sxm", "fp8"),
    ("MiniMaxAI/MiniMax-M2.5", "b200_sxm", "fp8"),
    # added 2026-12-04, every other one-node vLLM release run of a model and GPU the planner expresses:
    ("MiniMaxAI/MiniMax-M2.5", "h100_sxm", "fp8"),
    ("MiniMaxAI/MiniMax-M2.5", "b200_sxm", "fp4"),
    ("moonshotai/Kimi-K2.5", "b200_sxm", "fp4"),
    # added 2026-12-04 (issue 18, gpt-oss in the catalog): every one-node vLLM aggregated run of a recorded
    # release (H100 0.11.2 / 0.18.0, H200 0.18.0, B200 0.15.1); runs without a version are left out
    ("openai/gpt-oss-120b", "h100_sxm", "mxfp4"),
    ("openai/gpt-oss-120b", "h200_sxm", "mxfp4"),
    ("openai/gpt-oss-120b", "b200_sxm", "mxfp4"),
}
# A second source: SemiAnalysis InferenceMAX's gpt-oss-120b vLLM runs (benchmarks/data/README.md says what
# they ran). Designated the calibration set of the MXFP4 expert kernels (engine.MXFP4_W4A16_*,
# MXFP4_FLASHINFER_*) before any of them was predicted; the AIConfigurator gpt-oss runs (HOLDOUT) stay held
# out.
INFERENCEMAX_NAME = "inferencemax_vllm_gpt_oss.csv"
INFERENCEMAX_FIT = {
    ("openai/gpt-oss-120b", "h100_sxm", "mxfp4"),
    ("openai/gpt-oss-120b", "h200_sxm", "mxfp4"),
    ("openai/gpt-oss-120b", "b200_sxm", "mxfp4"),
}
INFERENCEMAX_GPU = {"h100": "h100_sxm", "h200": "h200_sxm", "b200": "b200_sxm"}
INFERENCEMAX_VLLM = "0.13.0"  # nvidia-master.yaml's image for these runs (PR #327)
INFERENCEMAX_RANGE_RATIO = 0.8  # --random-range-ratio: lengths uniform in [int(0.8 L), L]


# A second serving engine (SGLang) on the calibration models and GPUs: runs nobody fitted on, from another
# stack's benchmark campaign; predicted with the vLLM model as they are (SGLang schedules prefill its own way)
CROSSCHECK_NAME = "aic_sglang_agg_crosscheck.csv"
CROSSCHECK = {
    ("Qwen/Qwen3-32B", "h100_sxm", "bf16"),
    ("Qwen/Qwen3-235B-A22B-FP8", "h200_sxm", "fp8"),
    ("meta-llama/Llama-3.1-8B-Instruct", "h200_sxm", "fp8"),
}
MAX_GPUS = 8  # one node: multi-node DP / EP launches are not modelled end to end
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
    source: str = "AIC validation csv"
    dp: int = 1  # attention data-parallel ranks
    ep: bool = False  # --enable-expert-parallel (experts whole on TP x DP ranks)
    async_scheduling: bool = False  # the engine overlapped its host work with the GPU (see overlapped())
    version: str = ""  # the run's vLLM (or SGLang) version; "" where the campaign recorded none
    kv_cache_dtype: str = "auto"  # the KV cache the engine ran (checkpoint_kv_dtype)
    mxfp4_mxfp8: bool = False  # MXFP4 experts, MXFP8 activations (VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1)
    max_num_batched_tokens: int | None = None  # --max-num-batched-tokens; None: vLLM's default for the GPU


@dataclass(frozen=True, slots=True)
class Compared:
    row: Row
    ttft_ms: float
    tpot_ms: float
    tok_s: float
    kv_limited: bool = False  # concurrency above what the KV cache holds at mean occupancy

    def err(self, field: str) -> float:
        measured, predicted = getattr(self.row, field), getattr(self, field)
        return (predicted - measured) / measured * 100.0


# vLLM v0.14.0 (released 2026-01-20) turned async scheduling on by default (PR #27614); SGLang's overlap
# scheduler has been its default since v0.4 (2024-12). A run without a recorded version counts by its
# measurement date: the Llama-3.1-70B runs were measured 2025-10-29, before v0.14.
ASYNC_VLLM = (0, 14)
ASYNC_VLLM_RELEASED = "2026-01-20"


def overlapped(backend: str, version: str, source: str) -> bool:
    """Whether the measured engine ran with async (overlapped) scheduling by default."""
    if backend == "sglang":
        return True
    if version:
        release = vllm_release(version)
        if release is None:
            raise ValueError(f"vLLM version {version!r} is not MAJOR.MINOR[...]")
        return release >= ASYNC_VLLM
    measured = source.partition("measured=")[2][:10]
    return bool(measured) and measured >= ASYNC_VLLM_RELEASED


# NVIDIA's NVFP4 checkpoints (ModelOpt) declare kv_cache_quant_algo FP8 in hf_quant_config.json, and
# vLLM's --kv-cache-dtype auto follows the checkpoint since PR #30785 (merged after 2025-12-16, re-landing
# the reverted #29980): the FP4 runs of vLLM 0.15 and later ran an FP8 KV cache without asking for one.
# Earlier engines and the other checkpoints (native FP8 / INT4 configs carry no KV scheme) keep BF16.
CHECKPOINT_FP8_KV_VLLM = (0, 15)


def checkpoint_kv_dtype(backend: str, version: str, precision: str) -> str:
    """The KV-cache dtype `--kv-cache-dtype auto` resolved to in a measured run."""
    release = vllm_release(version) if backend == "vllm" and version else None
    fp8 = precision == "fp4" and release is not None and release >= CHECKPOINT_FP8_KV_VLLM
    return "fp8" if fp8 else "auto"


# The corpus's `batch_size` is AIConfigurator's per-attention-DP-rank batch: its summary reports
# concurrency = batch_size x attention_dp_size (`global_bs` in aiconfigurator
# src/aiconfigurator/sdk/backends/base_backend.py @00b0e2ea, `run_static`), and each row's own record
# agrees: every row with attention_dp_size 2 or 4 carries silicon_concurrency (and the `_c<N>_` of its id)
# = batch_size x attention_dp_size. The benchmark client ran that many users against the one DP engine.
# The Qwen3-235B rows read as DP (moe_tp_size above tp_size) leave attention_dp_size empty and record
# silicon_concurrency = batch_size, so they keep their batch.
def benchmark_concurrency(r: dict[str, str]) -> int:
    """The users the benchmark kept in flight: the row's per-DP-rank batch times its attention DP ranks."""
    return int(r["batch_size"]) * int(r.get("attention_dp_size") or 1)


def _find(name: str) -> Path:
    return DATA / name


# Most MoE rows of the corpus are SemiAnalysis InferenceX runs (github.com/SemiAnalysisAI/InferenceX,
# Apache-2.0) that AIConfigurator imported: every gpt-oss-120b, MiniMax-M2.5 and Kimi K2.5 vLLM row of the
# source files below matches an InferenceX configuration's search space point for point (gpt-oss: 56 B200,
# 43 H100, 51 H200 points, .github/configs/nvidia-master.yaml @0004cf5f), carries its image tags, and the 47
# rows of kimi-k2.5-gap-analysis.csv repeat InferenceX rows' measurements. benchmarks/data/README.md says
# what those runs ran; the rows are read as they ran (`inferencex_reading`), not as the import encoded them.
INFERENCEX_SOURCES = (
    "source_file=2026-03-25.csv",
    "source_file=2026-04-06.csv",
    "db-dump/",
    "source_file=kimi-k2.5-gap-analysis.csv",
)
# The client's --random-range-ratio 0.8 (uniform lengths in [int(0.8 L), L], input and output) is the
# workflow default from InferenceX @525079ad (2026-01-02) to its latest stored version; earlier runs (the
# Llama-3.1-70B rows of 2025-10-29) keep their nominal lengths: the setting then is not established.
INFERENCEX_RANGE_RATIO_FROM = "2026-01-02"
# InferenceX's Kimi K2.5 scripts launch `--tensor-parallel-size` only (benchmarks/single_node/
# kimik2.5_fp4_b200.sh at every stored version): rows the import records with expert parallelism ran
# without it.
INFERENCEX_NO_EP = {"moonshotai/Kimi-K2.5"}
# MiniMax-M2.5 FP8 on B200 with vLLM 0.17 (PR #757): the script passed --enable-expert-parallel to every
# entry (unconditionally at IX@13453b4f, behind an always-true `[ "$EP_SIZE" -ge 1 ]` at IX@07e171a3);
# EP became conditional with the v0.19 search space (PR #947).
INFERENCEX_ALWAYS_EP = {("MiniMaxAI/MiniMax-M2.5", "b200_sxm", "fp8", "0.17.0")}
# The `tp: 2, ep: 2, dp-attn: true` entries of minimaxm2.5-fp4-{b200,b300}-vllm (nvidia-master.yaml,
# mpashkovskii/InferenceX@01d209c2: 1k/1k at 256-1024 / 256-2048 users, B300 8k/1k at 512), launched as
# `--tensor-parallel-size=1 --data-parallel-size=2 --enable-expert-parallel` (minimaxm2.5_fp4_b200.sh):
# the db-dump config whose rows span those ranges. The FP8 scripts never read DP_ATTENTION, so their
# dp-attn entry ran TP 2 + EP.
INFERENCEX_DP_ATTENTION = {"707", "727"}
# vLLM refuses to shard a block-quantized FP8 expert whose per-rank width is not a multiple of the 128-wide
# block (vllm/model_executor/layers/quantization/fp8.py, Fp8MoEMethod.create_weights: "The output_size of
# gate's and up's weight = 192 is not divisible by weight quantization block_n = 128"): MiniMax-M2.5's
# 1,536-wide experts run TP 8 only with --enable-expert-parallel, so its TP 8 rows ran EP whatever the import
# records (the H200 script of PR #869 passed the flag behind an always-true `[ "$EP_SIZE" -ge 1 ]`).
FP8_BLOCK = 128
# Script flags that change the kernels or the cache: gpt-oss on B200 (benchmarks/single_node/
# gptoss_fp4_b200.sh after PR #789): VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1 and --kv-cache-dtype fp8;
# MiniMax-M2.5 on B300: --kv-cache-dtype fp8 (with the token budget below).
INFERENCEX_FLAGS: dict[tuple[str, str], dict[str, object]] = {
    ("openai/gpt-oss-120b", "b200_sxm"): {"mxfp4_mxfp8": True, "kv_cache_dtype": "fp8"},
    ("MiniMaxAI/MiniMax-M2.5", "b300_sxm"): {"kv_cache_dtype": "fp8"},
}
# MiniMax-M2.5 on B300 (minimaxm2.5_{fp8,fp4}_b300.sh from their first stored versions, PRs #1054 / #1055):
# `--kv-cache-dtype fp8 --max-num-batched-tokens $((ISL * 2))`, ISL the configuration's nominal prompt
INFERENCEX_TWICE_ISL_BUDGET = {("MiniMaxAI/MiniMax-M2.5", "b300_sxm")}


# InferenceMAX's Llama-3.3-70B vLLM campaign of 2025-10-29 (the calibration set's Llama-3.1-70B H100 / H200
# rows and the held-out B200 rows; InferenceX-app's blog post dates them) ran `vllm/vllm-openai:v0.10.2`
# (.github/workflows/70b-tmpl.yml @07e6e8a2) with `kv-cache-dtype: fp8`, `async-scheduling: true` and
# `max-num-batched-tokens: 8192` in every script's config.yaml (70b_fp8_h100_slurm.sh @2a205bb3,
# 70b_fp8_h200_slurm.sh @6ebc8824, 70b_fp8_b200_docker.sh @bb4c7f93), the sweep passing
# --random-range-ratio 0.8 (full-sweep-tmpl.yml, austenstone/InferenceMAX @9987d3e7). Read so since
# 2026-12-04; until then as serial BF16-cache runs at nominal lengths (docs/planner.md "The calibration set
# read as it ran").
LLAMA_CAMPAIGN = "meta-llama/Llama-3.1-70B"
LLAMA_CAMPAIGN_VLLM = "0.10.2"


def llama_campaign_reading(row: Row) -> Row:
    """`row` as InferenceMAX's 2025-10-29 Llama-70B campaign ran it (FP8 cache, async scheduling, the
    client's mean lengths); any other row unchanged."""
    if row.model != LLAMA_CAMPAIGN:
        return row
    changes = at_mean_lengths(row) | {"async_scheduling": True, "kv_cache_dtype": "fp8"}
    return dataclasses.replace(row, version=LLAMA_CAMPAIGN_VLLM, **changes)  # type: ignore[arg-type]


def client_tok_s(concurrency: int, osl: int, ttft_ms: float, tpot_ms: float) -> float:
    """Output tokens/s of a closed loop of `concurrency` users, each request TTFT + (OSL - 1) x TPOT."""
    return concurrency * osl / ((ttft_ms + tpot_ms * (osl - 1)) / 1e3)


def at_mean_lengths(row: Row) -> dict[str, object]:
    """The fields of `row` read at the client's mean random lengths (range ratio 0.8), the measured
    throughput too, at the outputs the users got."""
    osl = mean_random_length(row.osl)
    tok_s = client_tok_s(row.concurrency, osl, row.ttft_ms, row.tpot_ms)
    return {"isl": mean_random_length(row.isl), "osl": osl, "tok_s": tok_s}


def inferencex_run(source: str) -> bool:
    """Whether a corpus row's `silicon_data_source` names one of the InferenceX import files."""
    return any(tag in source for tag in INFERENCEX_SOURCES)


def inferencex_layout(r: dict[str, str]) -> tuple[int, int, bool]:
    """(TP, attention DP, EP) an InferenceX run launched with. InferenceX's launch scripts run TP GPUs:
    `--tensor-parallel-size=$TP [--enable-expert-parallel]`, or with dp-attn `--tensor-parallel-size=1
    --data-parallel-size=$TP --enable-expert-parallel`. The 2026-04-06 and db-dump imports encode a TP x EP
    run as attention_dp = TP, moe_ep = TP x EP (the same runs read (TP, 1, EP) in 2026-03-25.csv, and
    InferenceX's H100 configs have no dp-attn at all), so the GPUs are tp_size and DP attention is read
    only where the configuration is known to be dp-attn (INFERENCEX_DP_ATTENTION)."""
    tp = int(r["tp_size"])
    ep = int(r["moe_ep_size"] or 1) > 1 and r["model_path"] not in INFERENCEX_NO_EP
    key = (r["model_path"], r["system"], r["precision"], r["backend_version"])
    config = r["silicon_data_source"].partition("config_id=")[2].partition(";")[0]
    if config in INFERENCEX_DP_ATTENTION:
        return 1, tp, True
    return tp, 1, ep or key in INFERENCEX_ALWAYS_EP or not fp8_experts_shard(r, tp)


def fp8_experts_shard(r: dict[str, str], tp: int) -> bool:
    """Whether vLLM can split this row's FP8 experts over `tp` ranks without expert parallelism."""
    if r["precision"] != "fp8":
        return True
    width = model_spec(r["model_path"]).moe_intermediate_size
    return not width or (width // tp) % FP8_BLOCK == 0


def inferencex_reading(r: dict[str, str], row: Row) -> Row:
    """`row` as the InferenceX run it records ran: its launch layout, the client's mean lengths (range
    ratio 0.8) and its script's kernel flags."""
    tp, dp, ep = inferencex_layout(r)
    source = r["silicon_data_source"]
    measured = source.partition("measured=")[2][:10]
    changes: dict[str, object] = {"tp": tp, "dp": dp, "ep": ep}
    if measured >= INFERENCEX_RANGE_RATIO_FROM or "gap-analysis" in source:
        changes |= at_mean_lengths(row)
    changes |= INFERENCEX_FLAGS.get((row.model, row.system), {})
    if (row.model, row.system) in INFERENCEX_TWICE_ISL_BUDGET:
        changes["max_num_batched_tokens"] = 2 * row.isl
    return dataclasses.replace(row, **changes)  # type: ignore[arg-type]


def load_holdout(paths: tuple[Path, ...] | None = None, *, backend: str = "vllm") -> list[Row]:
    """Aggregated runs of the held-out model/GPU pairs on one node: TP, attention DP with the experts
    TP-sharded (moe_tp = TP x DP) or expert-parallel (moe_ep > 1); InferenceX's runs as they ran."""
    rows = []
    wanted = HOLDOUT | B300_FIT if backend == "vllm" else CROSSCHECK
    for path in paths or tuple(_find(name) for name in SAMPLE_NAMES):
        with path.open(newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                precision = r["precision"] or "bf16"
                precision = CORPUS_PRECISION.get((r["model_path"], precision), precision)
                key = (r["model_path"], r["system"], precision)
                if r["backend"] != backend or r["mode"] != "agg" or key not in wanted:
                    continue
                ix = backend == "vllm" and inferencex_run(r["silicon_data_source"])
                tp = int(r["tp_size"])
                # dense rows carry moe_tp 1 (or 0); only a product above TP means DP ranks
                expert_ranks = max(tp, int(r["moe_tp_size"] or tp) * int(r["moe_ep_size"] or 1))
                if not ix and (expert_ranks % tp or expert_ranks > MAX_GPUS):
                    continue
                conc, osl = benchmark_concurrency(r), int(r["osl"])
                ttft, tpot = float(r["silicon_ttft_ms"]), float(r["silicon_tpot_ms"])
                tok_s = client_tok_s(conc, osl, ttft, tpot)
                model, system, precision = key
                source = f"{backend} {r['backend_version']}, {r['id'][:40]}"
                row = Row(
                    model, system, precision, tp, int(r["isl"]), osl, conc, ttft, tpot, tok_s, source,
                    dp=expert_ranks // tp, ep=int(r["moe_ep_size"] or 1) > 1,
                    async_scheduling=overlapped(backend, r["backend_version"], r["silicon_data_source"]),
                    version=r["backend_version"],
                    kv_cache_dtype=checkpoint_kv_dtype(backend, r["backend_version"], precision),
                )  # fmt: skip
                row = inferencex_reading(r, row) if ix else row
                rows.append(llama_campaign_reading(row))
    return distinct_runs(rows)


# Two rows are one run where the launch matches and both measured latencies agree to 0.05 %: the corpus
# imports some InferenceX runs up to four times (2026-04-06.csv, its db-dump, kimi-k2.5-gap-analysis.csv
# and, for a few, 2026-03-25.csv), which would count a run two to four times in a median.
SAME_RUN = 5e-4


def distinct_runs(rows: list[Row]) -> list[Row]:
    """`rows` with each measured run once (the first import of it), in their order."""
    kept: dict[tuple[object, ...], list[Row]] = {}
    out = []
    for row in rows:
        launch = (row.model, row.system, row.precision, row.tp, row.dp, row.ep, row.isl, row.osl,
                  row.concurrency, row.version, row.kv_cache_dtype, row.mxfp4_mxfp8,
                  row.max_num_batched_tokens)  # fmt: skip
        same = kept.setdefault(launch, [])
        if any(_close(row.ttft_ms, o.ttft_ms) and _close(row.tpot_ms, o.tpot_ms) for o in same):
            continue
        same.append(row)
        out.append(row)
    return out


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= SAME_RUN * max(abs(a), abs(b))


def mean_random_length(nominal: int, ratio: float = INFERENCEMAX_RANGE_RATIO) -> int:
    """Mean of the benchmark client's random lengths, uniform integers in [int(ratio x L), L]."""
    return (int(nominal * ratio) + nominal) // 2


def load_inferencemax(path: Path | None = None) -> list[Row]:
    """InferenceMAX's vLLM rows, at their mean prompt and output lengths, on the path each GPU ran: Marlin
    W4A16 on Hopper (VLLM_MXFP4_USE_MARLIN=1, BF16 KV), FlashInfer MXFP4 x MXFP8 with an FP8 KV cache on
    B200; async scheduling on (the scripts pass it explicitly, before v0.14 made it the default)."""
    rows = []
    with (path or _find(INFERENCEMAX_NAME)).open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            system = INFERENCEMAX_GPU.get(r["gpu_model"])
            if r["framework"] != "vllm" or system is None:
                continue
            blackwell = system == "b200_sxm"
            isl, osl = (
                mean_random_length(int(r["input_seq_len"])),
                mean_random_length(int(r["output_seq_len"])),
            )
            conc = int(r["concurrency"])
            ttft = float(r["mean_time_to_first_token_sec"]) * 1e3
            tpot = float(r["mean_time_per_output_token_sec"]) * 1e3
            rows.append(
                Row(
                    "openai/gpt-oss-120b", system, "mxfp4", int(float(r["tensor_parallel"])), isl, osl, conc,
                    ttft, tpot, client_tok_s(conc, osl, ttft, tpot),
                    f"InferenceMAX vLLM {INFERENCEMAX_VLLM}, run {r['run_id']} {r['benchmark_date'][:10]}",
                    async_scheduling=True, version=INFERENCEMAX_VLLM,
                    kv_cache_dtype="fp8" if blackwell else "auto", mxfp4_mxfp8=blackwell,
                )
            )  # fmt: skip
    return rows


def load_rows(path: Path | None = None) -> list[Row]:
    """The calibration runs, InferenceMAX's Llama-70B campaign as it ran (`llama_campaign_reading`)."""
    with (path or _find(CSV_NAME)).open(newline="", encoding="utf-8") as fh:
        rows = [
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
                f"AIC, vLLM {r['backend_version'] or '(version not recorded)'}",
                async_scheduling=overlapped("vllm", r["backend_version"], r["source"]),
                version=r["backend_version"],
            )
            for r in csv.DictReader(fh)
        ]
    return [llama_campaign_reading(r) for r in rows]


def predict(row: Row) -> Compared | None:
    model, gpu = model_spec(row.model), get_gpu(GPU_MAP[row.system])
    try:
        perf = build_engine_perf(
            model,
            gpu,
            tensor_parallel_size=row.tp,
            data_parallel_size=row.dp,
            expert_parallel=row.ep,
            precision=row.precision,
            kv_cache_dtype=row.kv_cache_dtype,
            max_model_len=row.isl + row.osl,
            async_scheduling=row.async_scheduling,
            deepgemm_moe=not row.source.startswith("sglang")
            and deepgemm_pads_moe(row.version, gpu, row.precision, model, row.tp),
            mxfp4_mxfp8=row.mxfp4_mxfp8,
            max_num_batched_tokens=row.max_num_batched_tokens,
            slow_fp8_kv_decode=slow_fp8_kv_decode(row.version),
        )
    except InfeasibleError:
        return None
    point = predict_aggregated(perf, input_tokens=row.isl, output_tokens=row.osl, concurrency=row.concurrency)
    return Compared(row, point.ttft_s * 1e3, point.tpot_s * 1e3, point.output_tokens_per_s, point.kv_limited)


def compare_all(rows: list[Row]) -> list[Compared]:
    return [c for c in map(predict, rows) if c is not None]


def summary(compared: list[Compared]) -> dict[str, tuple[int, float, float, float, float]]:
    """Per group: (n, median |err| TTFT, median |err| TPOT, median |err| tok/s, mean |err| TPOT)."""
    groups: dict[str, list[Compared]] = {"all": compared}
    for c in compared:
        key = f"{MODEL_MAP[c.row.model]} {c.row.precision} {GPU_MAP[c.row.system]}"
        if c.row.dp > 1 or c.row.ep:
            key += f" {'DP' + str(c.row.dp) if c.row.dp > 1 else ''}{' EP' if c.row.ep else ''}"
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
        f"{r.tok_s:>8.0f} {c.tok_s:>8.0f} {c.err('tok_s'):>+7.1f}%  "
        f"{'async' if r.async_scheduling else 'sync '} {r.source}"
    )


def _table(title: str, compared: list[Compared]) -> None:
    print(title)
    print(
        f"{'model':<18} {'GPU':<5} {'TP':>2} {'ISL/OSL':<11} {'conc':>4} "
        f"{'TTFT ms':>9} {'pred':>9} {'err':>8} {'TPOT ms':>7} {'pred':>7} {'err':>8} "
        f"{'tok/s':>8} {'pred':>8} {'err':>8}  source"
    )
    for c in compared:
        print(_line(c))


def _summary_table(title: str, compared: list[Compared]) -> None:
    print(title)
    print(f"{'group':<28} {'n':>4} {'TTFT med':>9} {'TPOT med':>9} {'tok/s med':>10} {'TPOT mean':>10}")
    for key, (n, ttft, tpot, tok, tpot_mean) in summary(compared).items():
        print(f"{key:<28} {n:>4} {ttft:>8.1f}% {tpot:>8.1f}% {tok:>9.1f}% {tpot_mean:>9.1f}%")


def _step_speed() -> float:
    """Microseconds per EnginePerf.step_time_s call (the simulator calls it every step)."""
    perf = build_engine_perf(get_model("llama-3.3-70b"), get_gpu("H100"), tensor_parallel_size=4)
    calls = 200_000
    started = time.perf_counter()
    for i in range(calls):
        perf.step_time_s(
            prefill_tokens=512,
            prefill_attention_pairs=512 * 1024,
            decode_seqs=i & 63,
            decode_context_tokens=64_000,
        )
    return (time.perf_counter() - started) / calls * 1e6


def run_key(c: Compared) -> tuple[str, str, str]:
    """(model, system, precision): what the fit and held-out sets are keyed by."""
    return c.row.model, c.row.system, c.row.precision


def split_runs(extra: list[Compared]) -> tuple[list[Compared], list[Compared], list[Compared]]:
    """`load_holdout`'s runs as (Marlin MoE fit set, Blackwell MoE fit set, held out)."""
    moe_fit = [c for c in extra if run_key(c) == MOE_FIT]
    b300_fit = [c for c in extra if run_key(c) in B300_FIT]
    holdout = [c for c in extra if run_key(c) != MOE_FIT and run_key(c) not in B300_FIT]
    return moe_fit, b300_fit, holdout


def main(argv: list[str]) -> None:
    started = time.perf_counter()
    fitted = compare_all(load_rows())
    extra = compare_all(load_holdout())
    moe_fit, b300_fit, holdout = split_runs(extra)
    imax_fit = compare_all(load_inferencemax())
    elapsed = time.perf_counter() - started
    key = lambda c: (c.row.model, c.row.system, c.row.tp, c.row.isl, c.row.osl, c.row.concurrency)  # noqa: E731
    shown = fitted if "--all" in argv else [c for c in fitted if key(c) in SHOWCASE]
    _table(f"A. measured vLLM runs ({SOURCE}, used to fit the constants) vs eksinfer.perf", shown)
    held = extra if "--all" in argv else _one_per_group(extra)
    _table(
        "\nB. MoE and B200 runs (same corpus; Kimi K2.5 H200 fitted the MoE terms, the rest held out)", held
    )
    _summary_table(f"\nmedian / mean absolute error, dense fit set ({len(fitted)} runs)", fitted)
    _summary_table(f"\nmedian / mean absolute error, MoE fit set ({len(moe_fit)} runs)", moe_fit)
    _summary_table(
        f"\nmedian / mean absolute error, Blackwell MoE fit set ({len(b300_fit)} B300 runs)", b300_fit
    )
    _summary_table(
        f"\nmedian / mean absolute error, MXFP4 fit set (InferenceMAX gpt-oss-120b, {len(imax_fit)} runs)",
        imax_fit,
    )
    earlier = [c for c in holdout if run_key(c) in EARLIER_HOLDOUT]
    earlier = [c for c in earlier if c.row.dp == 1 and not c.row.ep]
    _summary_table(f"\nmedian / mean absolute error, held-out set ({len(holdout)} runs)", holdout)
    _goals(fitted, earlier, holdout)
    cross = compare_all(load_holdout((_find(CROSSCHECK_NAME),), backend="sglang"))
    _summary_table(
        f"\nmedian / mean absolute error, other engine: SGLang runs predicted as vLLM ({len(cross)} runs)",
        cross,
    )
    _saturated(fitted + extra + imax_fit)
    if "--residuals" in argv:
        ttft_residuals.report(
            (("calibration", fitted), ("MoE fit", moe_fit), ("MXFP4 fit", imax_fit), ("held out", holdout)),
            lambda r: f"{MODEL_MAP[r.model]} {r.precision} {GPU_MAP[r.system]}",
        )
    print(
        f"\npredicted {len(fitted) + len(extra) + len(imax_fit)} runs in {elapsed * 1e3:.0f} ms; "
        f"step_time_s: {_step_speed():.2f} us per call"
    )


# The first held-out set (session 2's goal figures): B200 Llama-3.1-70B FP8 and Kimi K2.5, Qwen3-235B TP only
EARLIER_HOLDOUT = {
    ("meta-llama/Llama-3.1-70B", "b200_sxm", "fp8"),
    ("moonshotai/Kimi-K2.5", "b200_sxm", "int4"),
    ("Qwen/Qwen3-235B-A22B-FP8", "h200_sxm", "fp8"),
}
GOALS = {"calibration": (12.0, 10.0, 8.0), "held out": (20.0, 15.0, 15.0)}  # issue 18: TTFT, TPOT, tok/s


def _goals(fitted: list[Compared], earlier: list[Compared], holdout: list[Compared]) -> None:
    """Issue 18's accuracy goals (median absolute error) as it words them, then the stricter checks this
    project keeps on top of them, each met or not."""
    print("\ngoals of issue 18, as worded (median |error| TTFT / TPOT / tok/s)")
    _goal_line("calibration", fitted, GOALS["calibration"])
    _goal_line("held out", holdout, GOALS["held out"])
    groups = _moe_groups(holdout)
    runs = [c for items in groups.values() for c in items]
    got = _medians(runs)
    verdict = "met" if max(got) <= MOE_GOAL else "MISSED"
    print(f"  MoE rows within {MOE_GOAL:.0f}% ({len(runs)} held-out MoE runs): TTFT {got[0]:.1f}%, "
          f"TPOT {got[1]:.1f}%, tok/s {got[2]:.1f}% {verdict}")  # fmt: skip
    print("stricter checks this project keeps (not the issue's wording)")
    _goal_line("held out, first set (B200 Llama FP8, Kimi; Qwen3-235B TP)", earlier, GOALS["held out"])
    misses = [
        f"{key} {label} {value:.1f}%"
        for key, items in sorted(groups.items())
        for label, value in zip(("TTFT", "TPOT", "tok/s"), _medians(items), strict=True)
        if value > MOE_GOAL
    ]
    verdict = "met" if not misses else "MISSED: " + ", ".join(misses)
    print(f"  every MoE model/GPU group within {MOE_GOAL:.0f}% ({len(groups)} held-out groups): {verdict}")


MOE_GOAL = 20.0  # issue 18: "MoE rows within 20 %"


def _medians(items: list[Compared]) -> list[float]:
    """Median absolute error of TTFT, TPOT and tokens/s."""
    return [statistics.median(abs(c.err(f)) for c in items) for f in ("ttft_ms", "tpot_ms", "tok_s")]


def _goal_line(name: str, items: list[Compared], goal: tuple[float, float, float]) -> None:
    verdict = ", ".join(
        f"{label} {value:.1f}% {'met' if value <= limit else 'MISSED'} (<= {limit:.0f}%)"
        for label, value, limit in zip(("TTFT", "TPOT", "tok/s"), _medians(items), goal, strict=True)
    )
    print(f"  {name} ({len(items)} runs): {verdict}")


def _moe_groups(holdout: list[Compared]) -> dict[str, list[Compared]]:
    """The held-out MoE runs by model, precision and GPU."""
    moe = {m: model_spec(m).is_moe for m in {c.row.model for c in holdout}}  # one config parse per model
    groups: dict[str, list[Compared]] = {}
    for c in holdout:
        if moe[c.row.model]:
            key = f"{MODEL_MAP[c.row.model]} {c.row.precision} {GPU_MAP[c.row.system]}"
            groups.setdefault(key, []).append(c)
    return groups


def _saturated(compared: list[Compared]) -> None:
    """Runs past what the KV cache holds: the wait-for-a-slot term decides TTFT; the weakest part."""
    over = sorted((c for c in compared if c.kv_limited), key=lambda c: c.ttft_ms / c.row.ttft_ms)
    if not over:
        return
    ratios = [c.ttft_ms / c.row.ttft_ms for c in over]
    tpot = statistics.median(abs(c.err("tpot_ms")) for c in over)
    print(
        f"\nC. {len(over)} runs above the KV cache's mean-occupancy capacity: predicted / measured TTFT "
        f"median x{statistics.median(ratios):.2f}, range x{ratios[0]:.2f}-x{ratios[-1]:.2f} "
        f"(TPOT median error {tpot:.1f}%)"
    )


def _one_per_group(compared: list[Compared]) -> list[Compared]:
    """Two runs per model/GPU pair: the shortest-prompt, lowest-concurrency one and the other extreme."""
    out: list[Compared] = []
    groups: dict[tuple[str, str], list[Compared]] = {}
    for c in compared:
        groups.setdefault((c.row.model, c.row.system), []).append(c)
    for items in groups.values():
        items = sorted(items, key=lambda c: (c.row.isl, c.row.osl, c.row.concurrency))
        out += [items[0], items[-1]]
    return out


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
