"""How long one vLLM engine step takes: a roofline with calibrated efficiency factors.

One step = the batch vLLM's v1 scheduler runs: chunked-prefill tokens plus one token for each decoding
sequence. Per step, on the busiest GPU (AIConfigurator @095f58a5: SOL = max(math, memory), gemm.rs):

    linear    max(weights read / (HBM x ETA_BW),  2 x active params x tokens / TP / (TFLOPS x ETA_GEMM))
              weights read = non-expert weights + touched experts; a MoE layer touches
              E x (1 - (1 - k/E)^tokens) distinct experts (uniform routing; `touched_experts`, which a mean
              over steps of different sizes passes in averaged: perf.serving.step_composition); expert
              FLOPs at their kernel family's factor (`moe_kernel`) of the dense rate (W4A16 experts on
              Blackwell: of the Hopper rate; MXFP4 experts: of their activations' rate);
              on vLLM 0.12's DeepGEMM MoE path (deepgemm_moe) plus local experts x 127 padding rows a step
    prefill   4 x layers x heads x qk/v dims x causal query-key pairs / TP / (TFLOPS x ETA_ATTN)
    decode    max(KV read x KV_READ_COST / (HBM x ETA_BW), attention FLOPs / (TFLOPS x ETA_ATTN)); an FP8
              cache read by vLLM 0.10's decode kernels costs SLOW_FP8_KV_DECODE times more
              sliding-window layers (gpt-oss: 18 of 36, window 128) attend to at most `window` keys per
              query: their prefill pairs are min(causal pairs, prompt tokens x window) and their decode
              context min(context tokens, decoding sequences x window) (exact when every prompt chunk and
              every context lies wholly past the window or wholly inside it; otherwise an upper bound);
              attention sinks (one learned logit per query head, gpt-oss) add one key to every query's
              softmax and read no KV
    TP        2 all-reduces per layer: ALLREDUCE_LATENCY + 2 (TP-1)/TP x tokens x hidden x 2 B / NVLink
    PP        per stage boundary: P2P_LATENCY + tokens x hidden x 2 B / inter-node GB/s (EFA)
    DP + EP   (MoE, vLLM --data-parallel-size D [--enable-expert-parallel]) each of D attention ranks runs
              its own batch and KV cache; experts are split over TP x D ranks (whole experts with EP, TP
              shards without), so a rank reads its share, touched by the tokens of all D ranks; per MoE layer
              vLLM's default all2all backend (allgather_reducescatter) all-gathers the D ranks' hidden states
              and reduce-scatters them back: (D - 1) x tokens x hidden x 2 B each way, over NVLink (<= 8
              ranks) or EFA. With EP the busiest rank sets the pace: its touched experts and its token
              assignments (hypergeometric: a token's k distinct experts) sit at the expected maximum of EP
              standard normals above the mean (Blom's approximation; uniform routing)
    overhead  GPU: LAYER_OVERHEAD x layers (+ MOE_LAYER_OVERHEAD x MoE layers) (launch gaps, routing)
              CPU: STEP_OVERHEAD + SEQ_OVERHEAD x decoding sequences (scheduler, input preparation,
              output processing: the engine core's host work each step)
              vLLM < 0.14 runs the host work between GPU steps (step = GPU + CPU); from 0.14 async
              scheduling is on by default (release notes of v0.14.0, PR #27614; not with pipeline
              parallelism) and schedules step N+1 while step N runs, so step = max(GPU, CPU)

Not modelled, tested and rejected on the calibration runs (docs/planner.md, "TTFT off the calibration set"): a
launch-bound floor for steps vLLM runs without a CUDA graph (more tokens than min(2 x max_num_seqs, 512,
max_num_batched_tokens), vllm/config/vllm.py _set_cudagraph_sizes), a per-prompt-token host cost, and an
all-reduce efficiency below the NVLink rate: each fits best at (or indistinguishably from) zero / one there.

Efficiency factors (fitted to the 219 vLLM H100/H200 runs in
benchmarks/data/aic_vllm_agg_dense_h100_h200.csv, from NVIDIA AIConfigurator's silicon_sample.csv
@095f58a5, starting from AIC's system YAMLs; the bandwidth, overhead and cache-read ones by
benchmarks/fit_dense.py): see the constants below. The model is additive on purpose:
each term is a separate kernel family in vLLM, so they do not overlap within a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

from eksinfer.catalog.hardware import GpuSpec
from eksinfer.catalog.models import ModelSpec
from eksinfer.errors import InfeasibleError, UsageError
from eksinfer.perf import memory as mem

# Fitted values (grid searches over the 219 calibration runs; starting points in brackets, where "first fit"
# is an earlier five-constant grid fit of this model to the same runs). ETA_BW and the host and launch
# overheads were refitted on 2026-12-04 (benchmarks/fit_dense.py) once InferenceMAX's Llama-70B runs were read
# as they ran (FP8 cache, async scheduling, mean lengths: docs/planner.md "The calibration set read as it
# ran"); the earlier values, fitted on those runs read as serial BF16-cache runs, are in brackets as "was".
ETA_BW = 0.9  # achieved / peak HBM bandwidth streaming weights [AIC 0.8, first fit 0.9, was 0.85]
ETA_GEMM = 0.45  # achieved / peak BF16 rate of prefill GEMMs, also W8A16 / W4A16 [first fit 0.4]
ETA_GEMM_FP8 = 0.55  # achieved / peak FP8 rate (W8A8 GEMMs) [FP8 rows; 0.55-0.7 fit equally]
ETA_ATTN = 0.3  # achieved / peak rate of attention kernels (FlashAttention / FlashMLA)
STEP_OVERHEAD_S = 1.0e-3  # scheduler + sampler + input prep per step [first fit 3 ms x layers / 64, was 2 ms]
LAYER_OVERHEAD_S = 45e-6  # kernel launches per layer [was 30 us]
# CPU work per running sequence per step (input preparation, sampling bookkeeping, output processing and
# detokenization): TPOT grows with the batch faster than the GPU terms allow where weights are small per GPU
# (Qwen3-32B TP 8: 8.0 ms at 8 sequences, 19.3 ms at 128) [fitted with the queue scales in serving.py]
SEQ_OVERHEAD_S = 40e-6
# Decode attention reads the KV cache at ETA_BW / KV_READ_COST: a paged attention kernel gathering blocks
# reaches less of the HBM bandwidth than weight streaming does [fitted with the four above; was 1, the
# cache read at ETA_BW]. Read as they ran, the Llama-70B runs' TPOT grows by ~0.2 us per context token per
# sequence at TP 1, shrinking as 1 / TP: a cache-read cost, not host work.
KV_READ_COST = 1.5
# vLLM 0.10's FP8-cache decode on those runs cost SLOW_FP8_KV_DECODE times the FP8 bytes' share more (an
# FP8 cache 1.5x slower than a BF16 one there, `slow_fp8_kv_decode`), fitted with the rest. Published
# kernel work of the time agrees in direction: vLLM's FlashAttention fork tuned FP8 decode tiles for head
# size 128 only after 0.10.2 (vllm-project/flash-attention PR #96, 2025-09-29: "FP8 decoding is not
# faster at all than BF16" before it); FlashInfer measured FP8-cache decode 12-35 % slower than BF16 on H20
# (flashinfer-ai/flashinfer issue #1753). Later releases' FP8-cache runs (Blackwell, vLLM 0.13-0.19) fit
# without it, and plans deploy those.
SLOW_FP8_KV_DECODE = 3.0
SLOW_FP8_KV_DECODE_BEFORE = (0, 11)
MOE_GEMM_FACTOR = 0.2  # expert (grouped, TP-sharded) GEMM rate relative to dense [Kimi K2.5 H200 runs]
MOE_LAYER_OVERHEAD_S = 75e-6  # routing, top-k, token permutation per MoE layer per step [same runs]
# (The Kimi runs are vLLM 0.16, async scheduling. Refitted when decode steps started reading only the
# experts their step kind touches (perf.serving.step_composition): grid search over factor 0.1-0.4 x
# 50-250 us on those 45 runs alone, minimising the sum of the three median errors, gave 0.2 and 90 us; with
# every step charged the prompt tokens smeared over it, 70 us; with the host work counted serially, 50 us.
# Those runs are InferenceX's; read at the client's mean lengths (bench_plan.inferencex_reading) the best
# cell of benchmarks/fit_moe.py was 0.175 x 90 us, 0.9 points better than 0.2 x 90 us: within 1 point, so
# the constants stayed. On 2026-12-04 15 of the 45 turned out to be second imports of the same runs
# (bench_plan.distinct_runs); on the 30 distinct runs 0.175 x 90 us is 2.1 points better (18.7 against
# 20.8), so by the same rule the factor moved to 0.175 (held-out Qwen3-235B TTFT 14 -> 25 %: the pair also
# serves Hopper FP8 experts, which have no fit set of their own). Rerun once the dense constants were
# refitted on the calibration set read as it ran (benchmarks/fit_dense.py): 0.2 x 75 us best (13.6 / 3.5 /
# 3.5 %), 0.175 x 90 us 3 points worse, so both moved.)
# Not fitted: expert load imbalance under EP is the busiest of EP ranks under uniform routing (its touched
# experts and its token assignments sit expected_max_normal(EP) standard deviations above the mean); skew
# of real routers (hot experts, no EPLB) comes on top and is not modelled.
# W4A16 routed experts (INT4 weights, BF16 activations: Kimi K2.5) run in vLLM's Marlin MoE kernel on CUDA
# GPUs (the default WNA16 MoE backend, vllm/model_executor/layers/quantization/compressed_tensors/
# compressed_tensors_moe.py: "Prefer to use the MarlinMoE kernel when it is supported"; its CUTLASS
# alternative is Hopper-only). Marlin issues Ampere's warp-level mma.sync.aligned.m16n8k16 (csrc/quantization/
# gptq_marlin), while Blackwell's dense BF16 peak (2.25 PFLOPS on B200) is reached only through its
# tcgen05 instructions, so on a Blackwell GPU these GEMMs are taken at most at the Hopper BF16 peak (an
# assumption: no public measurement of B200's mma.sync rate was found; not fitted).
MMA_SYNC_BF16_TFLOPS = 989.0
# vLLM 0.12 runs block-FP8 routed experts on Hopper in DeepGEMM's contiguous grouped GEMM at every batch size
# (`deepgemm_pads_moe` says when). Its permute sizes the rows for the worst case, M_sum = tokens x k + local
# experts x (DEEPGEMM_BLOCK_M - 1), each expert's rows padded to DeepGEMM's M alignment (128), and in 0.12 it
# initialised the expert id of every row it did not fill to 0, a valid expert, so DeepGEMM computes all M_sum
# rows (vLLM PR #30494, after 0.12: "We always initialize expert_ids to -1 so any row that is not explicitly
# written ... will be ... skipped by DeepGEMM's scheduler"). A step therefore pays local experts x 127 rows
# of expert GEMM whatever its batch. The routed rows keep the fitted MoE rate (MOE_GEMM_FACTOR, which lumps
# the per-routed-row permute / gather work with the GEMM); the padding rows are GEMM only (the scatter and
# gather kernels move routed rows) and run at the dense FP8 GEMM rate (ETA_GEMM_FP8; not fitted).
DEEPGEMM_BLOCK_M = 128
# FP8 / NVFP4 routed experts on Blackwell (SM100 / SM103) run in vLLM's fused Blackwell MoE kernels
# (FlashInfer CUTLASS / TRT-LLM-gen grouped GEMMs), not in the Marlin or Hopper kernels the two constants
# above were fitted on, so their rate and per-layer cost are fitted on their own runs: the B300 vLLM release
# runs of the corpus (MiniMax-M2.5 FP8 / NVFP4 on vLLM 0.19, Kimi K2.5 NVFP4 on 0.17 / 0.19; 111 on one
# node; benchmarks/bench_plan.py B300_FIT), chosen as the calibration set before any B300 prediction was
# computed; every B200 run stays held out. Grid search (factor 0.04-1.0 x 0-110 us, minimising the sum of
# the three median errors on those runs alone) gave 0.1 and 40 us; 0.1-0.15 x 40-50 us fit within 2 points.
# `.venv/bin/python -m benchmarks.fit_moe` reruns it (its grid, factor 0.05-1.0 x 0-160 us: the same cell).
# Rerun on the same grid and runs once their 13 DP 2 + EP rows were read at the concurrency they ran
# (bench_plan.benchmark_concurrency, twice the per-rank batch the first fit used): the same optimum, 0.1 and
# 40 us, now at 17.0 / 7.0 / 7.0 % (next best 0.1 x 50 us: 17.5 / 7.2 / 7.5 %).
# Rerun again once the runs were read as InferenceX launched them (bench_plan.inferencex_reading: the
# client's mean lengths, TP x EP or TP 1 x DP 2 instead of the import's TP x DP encoding, the five B300 TP 4
# + EP 4 runs no longer skipped as 16-GPU ones; 116 runs): 0.1 and 50 us, 17.5 / 7.2 / 6.9 % (tied with
# 0.125 x 50 us; 0.1 x 40 us 2.5 points worse, so the per-layer cost moved). The rule since: a constant
# keeps its value while it is within 1 point of the best cell (benchmarks/fit_moe.py prints which).
# Rerun once the MiniMax-M2.5 B300 runs were read with their scripts' FP8 cache and 2 x ISL token budget
# (`--kv-cache-dtype fp8 --max-num-batched-tokens $((ISL * 2))` in minimaxm2.5_{fp8,fp4}_b300.sh from the
# first stored version; 2026-12-04): 0.125 x 55 us best at 16.3 / 8.6 / 7.6 % (sum 32.6), 0.1 x 50 us 1.3
# points worse (17.2 / 8.3 / 8.3 %), so both moved. Rerun after the dense refit (benchmarks/fit_dense.py,
# whose cache-read cost reaches these FP8-cache runs too): 0.125 x 30 us, 16.5 / 7.4 / 7.3 %.
BLACKWELL_MOE_GEMM_FACTOR = 0.125  # [Blackwell FP8 / FP4 MoE runs on B300]
BLACKWELL_MOE_LAYER_OVERHEAD_S = 30e-6  # [same runs]
# MXFP4 routed experts (gpt-oss) run in kernels of their own, so they get constants of their own, fitted on
# a second source: SemiAnalysis InferenceMAX's gpt-oss-120b vLLM 0.13.0 runs (150, one node; benchmarks/data/
# README.md says what they ran; bench_plan.INFERENCEMAX_FIT), designated before any was predicted; the
# AIConfigurator gpt-oss runs stay held out. `moe_kernel` says which family an engine takes.
# - Hopper (W4A16: Marlin with VLLM_MXFP4_USE_MARLIN=1, as InferenceMAX ran; OpenAI's triton_kernels
#   matmul_ogs by default, taken as the same class): the factor multiplies the BF16 MMA rate (ETA_GEMM).
# - Blackwell (FlashInfer TRT-LLM-gen MXFP4 MoE): the factor multiplies the rate of the activations the
#   kernel runs, FP8 (ETA_GEMM_FP8) with MXFP8 activations (VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1, as
#   InferenceMAX ran), BF16 (ETA_GEMM) with vLLM's default BF16 activations.
# Fit (benchmarks/fit_moe.py, on those runs alone): grid factor 0.05-1.0 (19 values) x 0-160 us (5 us steps)
# per family, minimising the sum of the three median |errors| (TTFT, TPOT, tokens/s) over the family's runs.
# W4A16 (94 H100 / H200 runs): 0.3 and 45 us, 4.2 / 7.0 / 6.7 % (the borrowed 0.2 and 90 us: 26.4 / 23.1 /
# 19.1 %); within 1 point 0.275-0.3 x 45-50 us, within 5 points 0.25-0.325 x 40-55 us.
# FlashInfer (56 B200 runs, MXFP8 activations): 0.2 and 25 us, 6.6 / 4.3 / 4.1 % (the borrowed 0.1 and 40 us:
# 39.3 / 15.0 / 13.5 %); 0.175 x 25 us within 0.04 points, within 5 points 0.15-0.325 x 20-30 us. The
# per-layer cost is the sharp direction (gpt-oss: 36 MoE layers, small experts), the factor the flat one.
# Rerun after the dense refit (benchmarks/fit_dense.py): W4A16 0.3 x 35 us (4.0 / 7.1 / 6.7 %), FlashInfer
# 0.175 x 10 us (6.7 / 3.7 / 3.4 %), the earlier cells more than 1 point worse.
MXFP4_W4A16_GEMM_FACTOR = 0.3  # [InferenceMAX H100 / H200 runs]
MXFP4_W4A16_LAYER_OVERHEAD_S = 35e-6  # [same runs]
MXFP4_FLASHINFER_GEMM_FACTOR = 0.175  # [InferenceMAX B200 runs]
MXFP4_FLASHINFER_LAYER_OVERHEAD_S = 10e-6  # [same runs]
A2A_LATENCY_S = 20e-6  # per all-to-all (dispatch or combine); NCCL / DeepEP low-latency kernels: 10-50 us
NVLINK_DOMAIN_GPUS = 8  # an HGX node: EP beyond 8 ranks crosses EFA
# Literature values, not fitted:
ALLREDUCE_LATENCY_S = 10e-6  # per all-reduce over NVLink (AIC system YAML p2p_latency 10 us)
P2P_LATENCY_S = 25e-6  # per pipeline-stage hand-off over EFA (AIC: 10 us on NVLink; RDMA setup excluded)
DEFAULT_PP_LINK_GBPS = 50.0  # 400 Gb/s EFA per GPU on p5 (AIC inter_node_bw 50e9 B/s)


@dataclass(frozen=True, slots=True)
class EnginePerf:
    """A vLLM engine's memory layout and step-time coefficients, precomputed so `step_time_s` is cheap.

    `step_time_s` is the latency of one batch through every layer. With pipeline_parallel_size > 1 vLLM keeps
    one micro-batch per stage in flight, so a saturated engine finishes a batch every step_time_s / PP;
    `perf.serving` models that by giving each stage's micro-batch running / PP sequences.
    """

    model_id: str
    gpu: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    data_parallel_size: int  # attention data-parallel ranks (MoE with expert parallelism); 1 otherwise
    expert_parallel: bool  # MoE experts whole on TP x DP ranks (--enable-expert-parallel), not TP-sharded
    precision: str
    kv_cache_dtype: str
    async_scheduling: bool  # host work overlaps the GPU step (vLLM >= 0.14 default, PP 1)
    gpu_memory_utilization: float
    block_size: int
    max_model_len: int
    max_num_batched_tokens: int
    max_num_seqs: int
    num_layers: int
    weight_bytes_total: float
    weight_bytes_per_gpu: float
    activation_bytes_per_gpu: float
    kv_bytes_per_token: int  # whole model, all layers and KV heads
    kv_bytes_per_token_per_gpu: int
    kv_cache_bytes_per_gpu: float
    num_gpu_blocks: int
    kv_layout: mem.KvLayout  # vLLM's KV-cache groups (sliding-window layers keep only their window)
    # step-time coefficients (seconds)
    _dense_read_s: float
    _experts_read_s: float  # reading every routed expert held by this rank once
    _ep_token_scale: float  # tokens routed to this rank's experts per local token: DP
    _expert_keep: float  # 1 - k/E: chance one token leaves a given expert untouched
    _ep_z: float  # expert parallel: how many standard deviations the busiest of EP ranks sits above the mean
    _experts_per_rank: float  # routed experts one EP rank holds
    _assign_cv: float  # spread of one rank's expert assignments per routed token, relative to their mean
    _expert_per_token_s: float  # routed-expert GEMM seconds per local token at a balanced load
    _expert_padding_s: float  # vLLM 0.12's DeepGEMM path: GEMM seconds of the padding rows per step; else 0
    _linear_per_token_s: float
    _head_per_token_s: float
    _attn_per_pair_s: float  # full-attention layers
    _kv_read_per_token_s: float
    _attn_decode_per_token_s: float
    _sliding_window: float  # tokens a sliding layer attends to; 0 without sliding layers
    _attn_per_pair_swa_s: float  # the sliding-window layers' terms
    _kv_read_per_token_swa_s: float
    _attn_decode_per_token_swa_s: float
    _sink_keys: float  # 1 with attention sinks: one more logit per query and head, no KV
    _comm_fixed_s: float
    _comm_per_token_s: float
    _overhead_s: float

    @property
    def gpus(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size * self.data_parallel_size

    @property
    def kv_capacity_tokens(self) -> int:
        """KV pool tokens of one (data-parallel) rank: each DP rank keeps its own sequences. With
        sliding-window layers every sequence also takes its window's blocks from this pool
        (`seq_kv_tokens`)."""
        return self.num_gpu_blocks * self.block_size

    def in_flight_tokens(self, max_num_batched_tokens: int | None = None) -> int:
        """`max_in_flight_tokens` for this engine (or another token budget): see that function."""
        return max_in_flight_tokens(
            self.async_scheduling, max_num_batched_tokens or self.max_num_batched_tokens
        )

    def seq_kv_tokens(self, tokens: float) -> float:
        """Pool tokens a sequence of `tokens` occupies: its blocks (whole ones) in every full-attention
        group, at most its window's blocks in every sliding-window group."""
        return self.kv_layout.pool_tokens(tokens)

    def touched_experts(self, tokens: float) -> float:
        """Share of this rank's routed experts that a step of `tokens` (local) tokens reads, 0 for dense.

        Uniform routing: E x (1 - (1 - k/E)^n) distinct experts for n routed tokens (the tokens of all DP
        ranks meet at the experts); with EP the busiest of EP ranks sets the pace, its touched experts
        `expected_max_normal(EP)` standard deviations above the mean. Concave in the tokens: a mean over
        steps of different sizes reads fewer experts than the step at the mean tokens would.
        """
        if not self._experts_read_s or tokens <= 0:
            return 0.0
        touched: float = 1.0 - math.pow(self._expert_keep, tokens * self._ep_token_scale)
        if self._ep_z:
            spread = math.sqrt(touched * (1.0 - touched) / self._experts_per_rank)
            touched = min(1.0, touched + self._ep_z * spread)
        return touched

    def step_time_s(
        self,
        *,
        prefill_tokens: float,
        prefill_attention_pairs: float,
        decode_seqs: float,
        decode_context_tokens: float,
        touched_experts: float | None = None,
    ) -> float:
        """Seconds for one step through all layers (all pipeline stages) for the described batch.

        Counts are ints from the simulator; the planner passes mean-field floats, and for a mean over steps
        of different sizes the mean of `touched_experts` over them (the share of this rank's experts read).
        """
        tokens = prefill_tokens + decode_seqs
        if tokens <= 0:
            return 0.0
        read = self._dense_read_s
        compute = self._linear_per_token_s * tokens + self._head_per_token_s * (
            decode_seqs + (1 if prefill_tokens else 0)
        )
        if self._experts_read_s:
            routed = tokens * self._ep_token_scale
            experts = self._expert_per_token_s * tokens
            if self._ep_z:  # the busiest EP rank sets the pace: more token assignments
                experts *= 1.0 + self._ep_z * self._assign_cv / math.sqrt(max(1.0, routed))
            touched = self.touched_experts(tokens) if touched_experts is None else touched_experts
            read += self._experts_read_s * touched
            compute += experts + self._expert_padding_s
        t = read if read > compute else compute
        if prefill_tokens:
            # causal halving: exact for one chunk (T x (c + T) - T^2 / 2) and for fresh prompts (pairs / 2)
            pairs = float(prefill_attention_pairs)
            causal = max(0.5 * pairs, pairs - 0.5 * prefill_tokens * prefill_tokens)
            sinks = self._sink_keys * prefill_tokens
            t += self._attn_per_pair_s * (causal + sinks)
            if self._sliding_window:
                window = min(causal, prefill_tokens * self._sliding_window)
                t += self._attn_per_pair_swa_s * (window + sinks)
        if decode_context_tokens:
            sinks = self._sink_keys * decode_seqs
            kv = self._kv_read_per_token_s * decode_context_tokens
            flops = self._attn_decode_per_token_s * (decode_context_tokens + sinks)
            if self._sliding_window:
                window = min(float(decode_context_tokens), decode_seqs * self._sliding_window)
                kv += self._kv_read_per_token_swa_s * window
                flops += self._attn_decode_per_token_swa_s * (window + sinks)
            t += kv if kv > flops else flops
        gpu = t + self._comm_fixed_s + self._comm_per_token_s * tokens + self._overhead_s
        host = STEP_OVERHEAD_S + SEQ_OVERHEAD_S * decode_seqs
        if self.async_scheduling:
            return gpu if gpu > host else host
        return gpu + host


def expected_max_normal(n: int) -> float:
    """Expected largest of n independent standard normals (Blom 1958: the normal quantile at
    (n - 0.375) / (n + 0.25); within 0.03 of the exact 0.56 / 1.03 / 1.42 at n = 2 / 4 / 8), 0 for n = 1.

    The busiest of n EP ranks sits this many standard deviations above the mean. (sqrt(2 ln n), the
    asymptotic bound used before, is 1.18 / 1.67 / 2.04 there: twice the exact value at EP 2.)
    """
    if n <= 1:
        return 0.0
    return NormalDist().inv_cdf((n - 0.375) / (n + 0.25))


def _assignment_cv(model: ModelSpec, ep_ranks: int) -> float:
    """Coefficient of variation of one EP rank's expert assignments, per sqrt(routed tokens).

    Uniform routing: each token picks k distinct experts of E, so the picks landing on one rank's E / EP
    experts are hypergeometric: mean k p, variance k p (1 - p) (E - k) / (E - 1) with p = 1 / EP; over n
    independent tokens the relative spread is this value / sqrt(n).
    """
    if not model.is_moe or ep_ranks <= 1:
        return 0.0
    k, e, p = model.experts_per_token, model.num_experts, 1.0 / ep_ranks
    return math.sqrt((1.0 - p) * (e - k) / max(1, e - 1) / (k * p))


# vLLM releases whose default routed-expert path for block-FP8 MoE on Hopper is DeepGEMM at every batch size
# with the padding rows computed: [first, end)
DEEPGEMM_PADDED_VLLM = ((0, 12), (0, 13))
HOPPER_GPUS = frozenset({"H100", "H200"})


def vllm_release(version: str) -> tuple[int, int] | None:
    """(major, minor) of a vLLM version string such as "0.15.1"; None when it does not start with two
    numbers (no version recorded)."""
    parts = version.split(".")[:2]
    if len(parts) < 2 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def deepgemm_pads_moe(version: str, gpu: GpuSpec, precision: str, model: ModelSpec, tp: int) -> bool:
    """Whether vLLM `version`, as shipped, runs this engine's routed experts in the padded DeepGEMM path.

    vLLM 0.12 on Hopper (vLLM's Docker build installs DeepGEMM): VLLM_USE_DEEP_GEMM defaults to 1 (PR
    #24462); block-quantized FP8 experts take the DeepGEMM MoE backend except at TP 8 (PR #29346, "Disable
    DeepGEMM MoE by default when TP=8"); E8M0 scales are on by default on Hopper (PR #26197), and
    TritonOrDeepGemmExperts takes DeepGEMM when `is_deep_gemm_e8m0_used() or _valid_deep_gemm(...)`, so
    decode steps under 128 tokens go to DeepGEMM too; the rows its permute does not fill carry expert 0 and
    are computed (`deepgemm_moe_permute`: torch.zeros), until PR #30494 (merged for 0.13) set them to -1.
    Releases before 0.12 were not checked. FP8 MoE checkpoints are taken as block-quantized (128 x 128), as
    Qwen3-235B-A22B-FP8 and MiniMax-M2.5 are.
    """
    release = vllm_release(version)
    if release is None:
        return False
    first, end = DEEPGEMM_PADDED_VLLM
    hopper_fp8_moe = gpu.name in HOPPER_GPUS and precision == "fp8" and model.is_moe
    return first <= release < end and hopper_fp8_moe and tp != 8


def slow_fp8_kv_decode(version: str) -> bool:
    """Whether vLLM `version` decodes from an FP8 cache at SLOW_FP8_KV_DECODE: releases before 0.11 (the
    FP8-cache runs on record from then are InferenceMAX's vLLM 0.10.2 campaign)."""
    release = vllm_release(version)
    return release is not None and release < SLOW_FP8_KV_DECODE_BEFORE


MoeKernel = Literal["default", "blackwell", "mxfp4_w4a16", "mxfp4_flashinfer"]


def moe_kernel(gpu: GpuSpec, precision: str) -> MoeKernel:
    """Which family of routed-expert kernels, and so which constant pair, an engine takes: MXFP4 experts
    their own (FlashInfer on FP4-capable GPUs, W4A16 elsewhere), FP8 / NVFP4 experts on Blackwell the
    B300-fitted pair, everything else (Marlin W4A16 INT4, Hopper FP8) the Kimi-H200-fitted one."""
    if precision == "mxfp4":
        return "mxfp4_flashinfer" if gpu.fp4_tflops else "mxfp4_w4a16"
    return "blackwell" if blackwell_moe(gpu, precision) else "default"


def moe_constants(kernel: MoeKernel) -> tuple[float, float]:
    """(expert-GEMM factor, seconds per MoE layer per step) of a kernel family, read when an engine is
    built."""
    if kernel == "mxfp4_w4a16":
        return MXFP4_W4A16_GEMM_FACTOR, MXFP4_W4A16_LAYER_OVERHEAD_S
    if kernel == "mxfp4_flashinfer":
        return MXFP4_FLASHINFER_GEMM_FACTOR, MXFP4_FLASHINFER_LAYER_OVERHEAD_S
    if kernel == "blackwell":
        return BLACKWELL_MOE_GEMM_FACTOR, BLACKWELL_MOE_LAYER_OVERHEAD_S
    return MOE_GEMM_FACTOR, MOE_LAYER_OVERHEAD_S


def _expert_gemm_rate(gpu: GpuSpec, precision: str, gemm: float, mxfp4_mxfp8: bool = False) -> float:
    """Achieved FLOP/s of the routed-expert GEMMs before the kernel family's factor: the dense rate, except
    W4A16 experts on Blackwell (FP4 tensor cores), whose Marlin kernel runs at most at the Hopper BF16
    peak, and MXFP4 experts, which multiply at their activations' rate (BF16; FP8 for FlashInfer's MXFP4 x
    MXFP8 on Blackwell)."""
    if precision == "int4" and gpu.fp4_tflops:
        return min(gemm, MMA_SYNC_BF16_TFLOPS * 1e12 * ETA_GEMM)
    if precision == "mxfp4":
        if mxfp4_mxfp8 and moe_kernel(gpu, precision) == "mxfp4_flashinfer":
            return gpu.tflops_for("fp8") * 1e12 * ETA_GEMM_FP8
        return gpu.bf16_tflops * 1e12 * ETA_GEMM
    return gemm


def blackwell_moe(gpu: GpuSpec, precision: str) -> bool:
    """Whether routed experts run in vLLM's Blackwell MoE kernels: FP8, NVFP4 or MXFP4 weights on an
    FP4-capable GPU (W4A16 INT4 experts stay in Marlin there).

    MXFP4 (gpt-oss): vLLM's `get_mxfp4_backend` (vllm/model_executor/layers/quantization/mxfp4.py) picks
    FlashInfer's TRT-LLM-gen MXFP4 MoE on SM100 (SM100_FI_MXFP4_BF16 by default, SM100_FI_MXFP4_MXFP8_TRTLLM
    with VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1); on Hopper and Ampere it picks OpenAI's triton_kernels
    matmul_ogs (SM90 with triton_kernels installed, as vLLM's image ships it) or Marlin
    (VLLM_MXFP4_USE_MARLIN=1), both W4A16 (`mxfp4_w4a16_moe_quant_config`). Their constants are their own
    (`moe_kernel`: MXFP4_FLASHINFER_*, MXFP4_W4A16_*).
    """
    return bool(gpu.fp4_tflops) and precision in ("fp8", "fp4", "mxfp4")


def _check_parallelism(model: ModelSpec, tp: int, pp: int, dp: int = 1) -> None:
    if tp < 1 or pp < 1:
        raise UsageError("tensor and pipeline parallel sizes must be >= 1", field="tensor_parallel_size")
    if dp < 1 or (dp > 1 and not model.is_moe):
        raise UsageError("data-parallel attention is modelled for MoE only", field="data_parallel_size")
    if model.num_attention_heads % tp:
        raise UsageError(
            f"{model.num_attention_heads} attention heads are not divisible by TP {tp}",
            field="tensor_parallel_size",
        )
    if model.attention == "gqa" and model.num_kv_heads % tp and tp % model.num_kv_heads:
        raise UsageError(
            f"{model.num_kv_heads} KV heads and TP {tp} do not divide", field="tensor_parallel_size"
        )
    if pp > model.num_layers:
        raise UsageError(f"PP {pp} exceeds {model.num_layers} layers", field="pipeline_parallel_size")


def max_in_flight_tokens(async_scheduling: bool, max_num_batched_tokens: int) -> int:
    """Tokens scheduled but not yet settled: a token budget per batch in flight, two with async scheduling
    (vLLM 0.32 `VllmConfig.max_in_flight_tokens`). A sliding-window group reserves them above its window."""
    return max_num_batched_tokens * (2 if async_scheduling else 1)


def default_batch_limits(gpu: GpuSpec) -> tuple[int, int]:
    """vLLM's OpenAI-server defaults (arg_utils.py): 8192 tokens / 1024 seqs on >= 70 GiB non-A100 GPUs,
    else 2048 / 256."""
    if gpu.memory_gib >= 70 and not gpu.name.startswith("A100"):
        return 8192, 1024
    return 2048, 256


def _step_coefficients(
    model: ModelSpec,
    gpu: GpuSpec,
    par: tuple[int, int, int],
    precision: str,
    kv_dtype: str,
    pp_link_gbps: float,
    expert_parallel: bool,
    deepgemm_moe: bool = False,
    mxfp4_mxfp8: bool = False,
    slow_fp8_decode: bool = False,
) -> dict[str, float]:
    """Per-step time constants for `EnginePerf` (par = TP, PP, DP); see the module docstring for each term."""
    tp, pp, dp = par
    ep = tp * dp
    bw = gpu.hbm_bandwidth_gbps * 1e9 * ETA_BW
    # FP4 GEMMs take the FP8 efficiency: FP4 runs are held out, none fitted (the plan says so)
    low_gemm = (precision == "fp8" and bool(gpu.fp8_tflops)) or (precision == "fp4" and bool(gpu.fp4_tflops))
    gemm = gpu.tflops_for(precision) * 1e12 * (ETA_GEMM_FP8 if low_gemm else ETA_GEMM)
    expert_gemm = _expert_gemm_rate(gpu, precision, gemm, mxfp4_mxfp8)
    attn = gpu.tflops_for("fp8" if kv_dtype.startswith("fp8") else "bf16") * 1e12 * ETA_ATTN
    dense_b, expert_b = mem.linear_bytes(model, precision)
    lm_head = model.vocab_size * model.hidden_size
    dense_read = (mem.non_expert_linear_params(model) * dense_b + lm_head * mem.BF16_BYTES) / tp
    experts_read = model.routed_expert_params * expert_b / ep
    dense_linear = mem.non_expert_linear_params(model)
    expert_linear = model.num_moe_layers * model.experts_per_token * model.expert_params
    heads, layers = model.num_attention_heads, model.num_layers
    if model.attention == "mla":  # prefill decompresses K/V (qk = nope + rope, v); decode runs absorbed
        prefill_dims = model.head_dim + model.v_head_dim
        decode_dims = 2 * model.kv_lora_rank + model.qk_rope_head_dim
    else:
        prefill_dims = decode_dims = 2 * model.head_dim
    kv_full, kv_sliding = mem.kv_read_bytes_per_token_per_gpu(model, kv_dtype, tp)
    slow = SLOW_FP8_KV_DECODE if slow_fp8_decode and kv_dtype.startswith("fp8") else 1.0
    kv_bw = bw / (KV_READ_COST * slow)
    full_layers, sliding_layers = model.num_full_attention_layers, model.num_sliding_layers
    hidden_bytes = model.hidden_size * mem.BF16_BYTES
    link = gpu.interconnect_gbps * 1e9
    comm_fixed = comm_per_token = 0.0
    if tp > 1:
        comm_fixed += 2 * layers * ALLREDUCE_LATENCY_S
        comm_per_token += 2 * layers * 2 * (tp - 1) / tp * hidden_bytes / link
    if pp > 1:
        comm_fixed += (pp - 1) * P2P_LATENCY_S
        comm_per_token += (pp - 1) * hidden_bytes / (pp_link_gbps * 1e9)
    if dp > 1:  # tokens of all DP ranks meet at the experts and go back: two collectives per MoE layer
        a2a_link = (gpu.interconnect_gbps if ep <= NVLINK_DOMAIN_GPUS else pp_link_gbps) * 1e9
        moe = model.num_moe_layers
        # vLLM's default --all2all-backend (allgather_reducescatter, with or without EP): the dispatch
        # all-gathers the hidden states of the DP ranks and the combine reduce-scatters them, so each rank
        # receives and sends the other DP - 1 ranks' tokens once each (not top-k copies)
        comm_fixed += 2 * moe * A2A_LATENCY_S
        comm_per_token += 2 * moe * (dp - 1) * hidden_bytes / a2a_link
    ep_ranks = ep if expert_parallel and model.is_moe else 1
    # DeepGEMM path: (BLOCK_M - 1) padding rows for each local expert on top of the routed rows (TP shards of
    # all E experts or E / EP whole experts: 2 x routed_expert_params / (TP x DP) FLOPs per padding row)
    padding = 2.0 * (DEEPGEMM_BLOCK_M - 1) * model.routed_expert_params / ep / gemm if deepgemm_moe else 0.0
    moe_factor, moe_overhead = moe_constants(moe_kernel(gpu, precision))
    return {
        "_dense_read_s": dense_read / bw,
        "_experts_read_s": experts_read / bw,
        "_ep_token_scale": float(dp),
        "_expert_keep": 1.0 - model.experts_per_token / model.num_experts if model.is_moe else 1.0,
        "_ep_z": expected_max_normal(ep_ranks),
        "_experts_per_rank": max(1.0, model.num_experts / ep_ranks),
        "_assign_cv": _assignment_cv(model, ep_ranks),
        # expert FLOPs per local token: all ranks' tokens x top-k spread over EP ranks = k x expert / TP
        "_expert_per_token_s": 2.0 * expert_linear / moe_factor / tp / expert_gemm,
        "_expert_padding_s": padding,
        "_linear_per_token_s": 2.0 * dense_linear / tp / gemm,
        "_head_per_token_s": 2.0 * lm_head / tp / gemm,
        "_attn_per_pair_s": 2.0 * full_layers * heads * prefill_dims / tp / attn,
        "_kv_read_per_token_s": kv_full / kv_bw,
        "_attn_decode_per_token_s": 2.0 * full_layers * heads * decode_dims / tp / attn,
        "_sliding_window": float(model.sliding_window if sliding_layers else 0),
        "_attn_per_pair_swa_s": 2.0 * sliding_layers * heads * prefill_dims / tp / attn,
        "_kv_read_per_token_swa_s": kv_sliding / kv_bw,
        "_attn_decode_per_token_swa_s": 2.0 * sliding_layers * heads * decode_dims / tp / attn,
        "_sink_keys": 1.0 if model.attention_sinks else 0.0,
        "_comm_fixed_s": comm_fixed,
        "_comm_per_token_s": comm_per_token,
        "_overhead_s": LAYER_OVERHEAD_S * layers + moe_overhead * model.num_moe_layers,
    }


def _fit_context(model: ModelSpec, capacity: int, requested: int | None, strict: bool, where: str) -> int:
    """--max-model-len: the model's context capped at the KV capacity when not given; an explicit value
    that the KV cannot hold is infeasible (vLLM refuses to start), unless the block count was overridden."""
    if requested is None:
        requested = min(model.max_context, capacity)
    elif strict and requested > capacity:
        raise InfeasibleError(
            f"memory: {where} holds {capacity:,} KV tokens, fewer than max_model_len {requested:,}",
            binding=["memory"],
        )
    if requested < 1 or capacity < 1:
        raise InfeasibleError(f"memory: {where} has no room for KV cache", binding=["memory"])
    return requested


def build_engine_perf(
    model: ModelSpec,
    gpu: GpuSpec,
    *,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    data_parallel_size: int = 1,
    expert_parallel: bool | None = None,
    precision: str | None = None,
    kv_cache_dtype: str = "auto",
    gpu_memory_utilization: float = 0.9,
    block_size: int = 16,
    max_model_len: int | None = None,
    num_gpu_blocks: int | None = None,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
    pp_link_gbps: float = DEFAULT_PP_LINK_GBPS,
    async_scheduling: bool | None = None,
    deepgemm_moe: bool = False,
    mxfp4_mxfp8: bool = False,
    slow_fp8_kv_decode: bool = False,
) -> EnginePerf:
    """Size one engine (replica) the way vLLM does and precompute its step-time constants.

    Raises InfeasibleError (binding: memory) when the weights do not fit, or when an explicit max_model_len
    needs more KV than is left; max_model_len=None takes the model's context, capped at what fits.
    async_scheduling=None is vLLM's default for the version the renderer deploys (>= 0.14): on, except
    with pipeline parallelism; pass False to predict an older engine (the calibration runs are vLLM 0.12).
    deepgemm_moe=True predicts routed experts in vLLM 0.12's padded DeepGEMM path (`deepgemm_pads_moe`
    says where vLLM took it by default); False, the kernels the MoE constants were fitted on.
    mxfp4_mxfp8=True predicts MXFP4 experts on Blackwell with MXFP8 activations (vLLM's
    VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1); False, vLLM's default BF16 activations (what plans deploy).
    slow_fp8_kv_decode=True predicts an FP8 cache read by vLLM 0.10's decode kernels (`slow_fp8_kv_decode`
    says which releases); False, the releases plans deploy.
    """
    tp, pp, dp = tensor_parallel_size, pipeline_parallel_size, data_parallel_size
    _check_parallelism(model, tp, pp, dp)
    # --enable-expert-parallel: experts whole on EP = TP x DP ranks; else TP-sharded over the same ranks
    ep = model.is_moe and tp * dp > 1 and (dp > 1 if expert_parallel is None else expert_parallel)
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise UsageError("must be in (0, 1]", field="gpu_memory_utilization")
    precision = precision or model.native_precision
    mbt_default, seqs_default = default_batch_limits(gpu)
    mbt = max_num_batched_tokens or mbt_default
    seqs = max_num_seqs or seqs_default
    total_w = mem.weight_bytes(model, precision)
    experts_w = model.routed_expert_params * mem.linear_bytes(model, precision)[1]
    w_gpu = (total_w - experts_w) / (tp * pp) + experts_w / (tp * pp * dp)  # attention replicated per DP rank
    act = mem.activation_bytes(model, mbt)
    kv_mem = gpu_memory_utilization * gpu.memory_bytes - w_gpu - act - mem.non_torch_bytes(tp * pp * dp)
    kv_tok_gpu = mem.kv_bytes_per_token_per_gpu(model, kv_cache_dtype, tp, pp)
    where = f"{model.id} {precision} on {tp * pp * dp} x {gpu.name} (TP {tp}, PP {pp}, DP {dp})"
    if kv_mem <= 0:
        need = (w_gpu + act) / mem.GIB
        raise InfeasibleError(
            f"memory: {where} needs {need:.1f} GiB per GPU for weights and activations, "
            f"{gpu_memory_utilization * gpu.memory_gib:.1f} GiB usable",
            binding=["memory"],
        )
    blocks = num_gpu_blocks if num_gpu_blocks is not None else int(kv_mem // (block_size * kv_tok_gpu))
    layout = mem.kv_layout(model, pp, block_size)
    overlap = pp == 1 if async_scheduling is None else async_scheduling
    capacity = layout.max_seq_tokens(blocks * block_size, max_in_flight_tokens(overlap, mbt))
    max_model_len = _fit_context(model, capacity, max_model_len, num_gpu_blocks is None, where)
    return EnginePerf(
        model_id=model.id,
        gpu=gpu.name,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        data_parallel_size=dp,
        precision=precision,
        kv_cache_dtype=kv_cache_dtype,
        async_scheduling=overlap,
        gpu_memory_utilization=gpu_memory_utilization,
        block_size=block_size,
        max_model_len=max_model_len,
        max_num_batched_tokens=mbt,
        max_num_seqs=seqs,
        num_layers=model.num_layers,
        weight_bytes_total=total_w,
        weight_bytes_per_gpu=w_gpu,
        activation_bytes_per_gpu=act,
        kv_bytes_per_token=mem.kv_bytes_per_token(model, kv_cache_dtype),
        kv_bytes_per_token_per_gpu=kv_tok_gpu,
        kv_cache_bytes_per_gpu=float(blocks * block_size * kv_tok_gpu),
        num_gpu_blocks=blocks,
        kv_layout=layout,
        expert_parallel=ep,
        **_step_coefficients(
            model,
            gpu,
            (tp, pp, dp),
            precision,
            kv_cache_dtype,
            pp_link_gbps,
            ep,
            deepgemm_moe and model.is_moe,
            mxfp4_mxfp8,
            slow_fp8_kv_decode,
        ),
    )


def load_time_s(perf: EnginePerf, *, read_gbps: float = 1.0, startup_s: float = 60.0) -> float:
    """Rough engine start: process + CUDA-graph capture (startup_s) + weights streamed from S3 or a cache
    at read_gbps GB/s per node (a conservative default for S3 without a local cache)."""
    return startup_s + perf.weight_bytes_total / (read_gbps * 1e9) / max(1, math.ceil(perf.gpus / 8))
