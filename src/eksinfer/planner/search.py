"""Candidate search: instance x TP x PP x precision x KV-cache dtype x aggregated / disaggregated x replicas.

For every engine shape that fits in memory, sweep the per-replica concurrency, keep the largest one whose
predicted latency meets the SLOs (means scaled by tail allowances: p99 TTFT runs about 2x the mean and TPOT
about 1.1x in the MLPerf Inference v4.1 / v5.0 server logs of closed/NVIDIA Llama-2-70B), then size
replicas for the target load (x1.2 headroom on a request rate, llm-d planner's factor) and price the nodes.
Tiers bound the shapes:
    tier 1  one GPU per replica (or one MIG slice)            models up to 40B total parameters
    tier 2  TP 2-8 inside one node                             larger models, below 700B MoE
    tier 3  multi-node: PP across nodes (LeaderWorkerSet) and prefill/decode disaggregation, EFA nodes
A model starts at its size's tier and moves up only when nothing in that tier fits or meets the SLOs; a
model in tier 1 by its weight bytes alone (`weighs_next_tier`) is also priced in tier 2, cheaper wins.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from eksinfer.catalog import GpuSpec, InstanceSpec, ModelSpec, get_gpu, list_instances
from eksinfer.errors import InfeasibleError
from eksinfer.perf import EnginePerf, ServingPoint, build_engine_perf, predict_aggregated, predict_decode
from eksinfer.perf.engine import moe_kernel
from eksinfer.perf.memory import GIB, weight_bytes
from eksinfer.perf.mix import MixPoint, predict_aggregated_mix, predict_decode_mix
from eksinfer.planner.phases import early
from eksinfer.planner.request import PlanRequest

TTFT_TAIL = 2.0  # p99 / mean TTFT allowance (MLPerf server logs: 1.7-3.1)
TPOT_TAIL = 1.1  # p99 / mean TPOT allowance (MLPerf: 1.02-1.18)
RATE_HEADROOM = 1.2  # replicas for 120 % of a target request rate (llm-d planner config_finder)
BATCH_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
TIER1_MAX_PARAMS_B = 40.0
# ...or whose checkpoint's own weights fit one 80 GB GPU with room for activations and KV (0.9 x 80 GiB = 72
# GiB usable, minus 7.6 GiB of MoE activations): gpt-oss-120b's MXFP4 checkpoint is 60.7 GiB, and vLLM's
# gpt-oss recipe runs it at TP 1 for the best throughput per GPU
TIER1_MAX_WEIGHT_GIB = 64.0
TIER3_MIN_MOE_PARAMS_B = 700.0
MAX_NODES_PER_ENGINE = 4


@dataclass(frozen=True, slots=True)
class Shape:
    """One engine configuration on one instance type."""

    instance: InstanceSpec
    gpu: GpuSpec  # a MIG slice presents itself as a smaller GPU
    tier: int
    mode: str  # aggregated | disaggregated
    precision: str
    tp: int
    pp: int
    mig_profile: str | None = None
    slices_per_gpu: int = 1
    kv_cache_dtype: str = "auto"  # vLLM --kv-cache-dtype: auto (the model's activation dtype) or fp8
    dp: int = 1  # attention data-parallel ranks, experts sharded over TP x DP (MoE, one node)

    @property
    def nodes_per_replica(self) -> int:
        return self.pp if self.tier == 3 else 1

    @property
    def gpus_per_replica(self) -> int:
        return self.tp * self.pp * self.dp


@dataclass(frozen=True, slots=True)
class Candidate:
    shape: Shape
    perf: EnginePerf
    point: ServingPoint  # aggregated engine, or the decode engine when disaggregated, at the planned load
    batch: int  # SLO-feasible concurrency per (decode) replica
    replicas: int  # engine replicas (decode replicas when disaggregated)
    prefill_replicas: int
    ttft_s: float
    tpot_s: float
    requests_per_s: float  # the deployment's SLO-feasible capacity
    nodes: int
    monthly_usd: float
    on_prem_replicas: int = 0


@dataclass
class Misses:
    """Why shapes were dropped, for the infeasible message; `closest` is the best latency seen."""

    memory: int = 0
    slo: int = 0
    closest: tuple[float, Shape, ServingPoint] | None = None

    def note_slo(self, shape: Shape, point: ServingPoint, slo_ttft: float, slo_tpot: float) -> None:
        self.slo += 1
        miss = max(point.ttft_s * TTFT_TAIL / slo_ttft, point.tpot_s * TPOT_TAIL / slo_tpot)
        if self.closest is None or miss < self.closest[0]:
            self.closest = (miss, shape, point)


def weighs_next_tier(model: ModelSpec) -> bool:
    """A model in tier 1 only because its checkpoint fits one GPU (gpt-oss-120b): such a GPU comes in
    8-GPU nodes only, so at a light load TP over a smaller node's GPUs (tier 2) can cost less; the plan
    takes the cheaper of the two tiers."""
    return model_tier(model) == 1 and model.total_params_b > TIER1_MAX_PARAMS_B


def model_tier(model: ModelSpec) -> int:
    if model.is_moe and model.total_params_b >= TIER3_MIN_MOE_PARAMS_B:
        return 3
    one_gpu = weight_bytes(model, model.native_precision) <= TIER1_MAX_WEIGHT_GIB * GIB
    return 1 if model.total_params_b <= TIER1_MAX_PARAMS_B or one_gpu else 2


def precisions(model: ModelSpec, gpu: GpuSpec, request: PlanRequest) -> list[str]:
    """Native precision, plus FP8 for BF16 models: W8A8 on GPUs with FP8 tensor cores, weight-only W8A16
    on Ampere (A100, A10G), where vLLM's FP8 path falls back to Marlin kernels (half the weight bytes, GEMMs
    at the BF16 rate). vLLM quantizes online when no FP8 checkpoint exists."""
    forced = request.constraints.precision
    if forced:
        if forced == "mxfp4" and model.native_precision != "mxfp4":
            return []  # vLLM serves MXFP4 only from a checkpoint that ships it (gpt-oss); no online quantizer
        return [] if forced == "fp4" and not gpu.fp4_tflops else [forced]  # FP4 needs FP4 tensor cores
    out: list[str] = [model.native_precision]
    if model.native_precision == "bf16":
        out.append("fp8")
    if gpu.fp4_tflops and "fp4" in dict(model.hf_variants) and model.native_precision != "fp4":
        out.append("fp4")  # a published NVFP4 checkpoint, on FP4 tensor cores (B200, B300)
    return out


def kv_cache_dtypes(gpu: GpuSpec, request: PlanRequest, precision: str) -> list[str]:
    """auto, plus fp8 on GPUs with FP8 tensor cores (Ada, Hopper, Blackwell): half the KV bytes per token,
    so about twice the sequences per engine, for a small accuracy cost the plan's `why` states.

    NVFP4 (fp4) shapes serve NVIDIA's ModelOpt checkpoints, whose hf_quant_config.json declares
    kv_cache_quant_algo FP8, and vLLM's `--kv-cache-dtype auto` follows the checkpoint (PR #30785, from
    v0.15): there auto is the FP8 cache, so only fp8 is searched, and rendered explicitly.
    """
    if request.constraints.kv_cache_dtype:
        return [request.constraints.kv_cache_dtype]
    if precision == "fp4" and gpu.fp8_tflops:
        return ["fp8"]
    return ["auto", "fp8"] if gpu.fp8_tflops else ["auto"]


def mig_slices(gpu: GpuSpec) -> list[tuple[str, GpuSpec, int]]:
    """(profile, slice as a GPU, slices per GPU): an `Ng.Mgb` slice has N/7 of the SMs and bandwidth; how
    many fit a GPU depends on its memory too (B300: 7 x 1g.34gb but 4 x 1g.67gb)."""
    out = []
    for profile in gpu.mig_profiles:
        compute, mem = profile.split(".")
        sevenths = int(compute.rstrip("g"))
        part = dataclasses.replace(
            gpu,
            name=f"{gpu.name} MIG {profile}",
            memory_gib=float(mem.rstrip("gb")) * 0.93,  # GB on the label, about 7 % less usable
            hbm_bandwidth_gbps=gpu.hbm_bandwidth_gbps * sevenths / 7,
            bf16_tflops=gpu.bf16_tflops * sevenths / 7,
            fp8_tflops=None if gpu.fp8_tflops is None else gpu.fp8_tflops * sevenths / 7,
            fp4_tflops=None if gpu.fp4_tflops is None else gpu.fp4_tflops * sevenths / 7,
        )
        out.append((profile, part, gpu.mig_instances_per_gpu(profile)))
    return out


def enumerate_shapes(request: PlanRequest, tier: int) -> list[Shape]:
    """Every engine shape of `tier` on the allowed, priced instance types."""
    c = request.constraints
    shapes: list[Shape] = []
    if tier == 3 and early(c.phase):  # phases 1 / 1.5: Auto Mode, one node per replica, no P/D
        return shapes
    for inst in list_instances(c.prices, c.region):
        if c.instance_families and inst.family not in c.instance_families:
            continue
        if inst.price(c.capacity_type) is None:
            continue
        gpu = get_gpu(inst.gpu)
        if c.needs_mig and not gpu.mig:
            continue
        for precision in precisions(request.model, gpu, request):
            for kv_dtype in kv_cache_dtypes(gpu, request, precision):
                shapes.extend(
                    dataclasses.replace(shape, kv_cache_dtype=kv_dtype)
                    for shape in _tier_shapes(request, tier, inst, gpu, precision)
                )
    return shapes


def _tier_shapes(
    request: PlanRequest, tier: int, inst: InstanceSpec, gpu: GpuSpec, precision: str
) -> list[Shape]:
    heads = request.model.num_attention_heads
    if tier == 1:
        if request.constraints.needs_mig:
            return [
                Shape(inst, part, 1, "aggregated", precision, 1, 1, profile, per_gpu)
                for profile, part, per_gpu in mig_slices(gpu)
            ]
        return [Shape(inst, gpu, 1, "aggregated", precision, 1, 1)]
    if tier == 2:
        shapes = [
            Shape(inst, gpu, 2, "aggregated", precision, tp, 1)
            for tp in (2, 4, 8)
            if tp <= inst.gpus and heads % tp == 0
        ]
        if request.model.is_moe:  # vLLM wide EP: DP attention ranks, experts over all of them
            shapes += [
                Shape(inst, gpu, 2, "aggregated", precision, 1, 1, dp=dp)
                for dp in (2, 4, 8)
                if dp <= inst.gpus
            ]
        return shapes
    if inst.efa_gbps <= 0 or heads % inst.gpus:
        return []
    out = []
    for nodes in range(1, MAX_NODES_PER_ENGINE + 1):
        out.append(Shape(inst, gpu, 3, "disaggregated", precision, inst.gpus, nodes))
        if nodes > 1:
            out.append(Shape(inst, gpu, 3, "aggregated", precision, inst.gpus, nodes))
    return out


def build_perf(request: PlanRequest, shape: Shape, max_model_len: int) -> EnginePerf:
    return build_engine_perf(
        request.model,
        shape.gpu,
        tensor_parallel_size=shape.tp,
        pipeline_parallel_size=shape.pp,
        data_parallel_size=shape.dp,
        expert_parallel=expert_parallel(request.model, shape),
        precision=shape.precision,
        kv_cache_dtype=shape.kv_cache_dtype,
        max_model_len=max_model_len,
        pp_link_gbps=shape.instance.efa_gbps / 8 / max(1, shape.instance.gpus),
        mxfp4_mxfp8=mxfp8_activations(shape),
    )


# vLLM's gpt-oss recipe for Blackwell (recipes.vllm.ai, openai/gpt-oss-*: "Blackwell (B200) with FlashInfer
# MXFP4+MXFP8 MoE") sets this: the MoE multiplies on FP8 tensor cores instead of BF16 ones. Both measured
# campaigns of gpt-oss on B200 (InferenceX, vLLM 0.13 and 0.15.1) ran it, so a plan deploys what was measured.
MXFP4_MXFP8_ENV = {"VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8": "1"}


def expert_parallel(model: ModelSpec, shape: Shape) -> bool:
    """Whether the plan runs --enable-expert-parallel: MoE on more than one GPU, except MXFP4 (gpt-oss),
    whose vLLM recipe (recipes.vllm.ai, openai/gpt-oss: `--tensor-parallel-size` only) and every measured
    run (InferenceX's gptoss-fp4-*-vllm entries have no EP) shard the experts by TP."""
    return model.is_moe and shape.gpus_per_replica > 1 and shape.precision != "mxfp4"


def mxfp8_activations(shape: Shape) -> bool:
    """Whether the engine runs MXFP4 experts with MXFP8 activations (FlashInfer's Blackwell MoE)."""
    return shape.precision == "mxfp4" and moe_kernel(shape.gpu, shape.precision) == "mxfp4_flashinfer"


def sweep(perf: EnginePerf, request: PlanRequest, *, decode_only: bool) -> list[ServingPoint]:
    """Predicted points at every grid concurrency that fits, ascending."""
    t = request.traffic
    points = []
    for batch in BATCH_GRID:
        if batch > perf.max_num_seqs * perf.data_parallel_size:
            break
        if t.is_mix:  # classes priced apart; a P/D decode engine also prefills the classes kept local
            point: ServingPoint = (
                predict_decode_mix(perf, t.classes, concurrency=batch, prefix_hit=t.shared_prefix_ratio)
                if decode_only
                else predict_aggregated_mix(
                    perf, t.classes, concurrency=batch, prefix_hit=t.shared_prefix_ratio
                )
            )
        elif decode_only:
            point = predict_decode(
                perf, input_tokens=t.input_tokens, output_tokens=t.output_tokens, concurrency=batch
            )
        else:
            point = predict_aggregated(
                perf,
                input_tokens=t.input_tokens,
                output_tokens=t.output_tokens,
                concurrency=batch,
                prefix_hit=t.shared_prefix_ratio,
            )
        if point.kv_limited:
            break
        points.append(point)
    return points


def meets(point: ServingPoint, request: PlanRequest, ttft_s: float | None = None) -> bool:
    """A mix meets the TTFT target on its slowest class (where the tail is), not on the mean."""
    if ttft_s is None:
        ttft_s = point.slowest_ttft_s if isinstance(point, MixPoint) else point.ttft_s
    return meets_latency(ttft_s, point.tpot_s, request)


def meets_latency(ttft_s: float, tpot_s: float, request: PlanRequest) -> bool:
    """Mean latencies times the p99 allowances within the targets."""
    return ttft_s * TTFT_TAIL <= request.slo.ttft_s and tpot_s * TPOT_TAIL <= request.slo.tpot_s


def demand_requests_per_s(request: PlanRequest, e2e_s: float) -> float:
    """The target as a request rate; a concurrency target converts through Little's law."""
    t = request.traffic
    if t.concurrency is not None:
        return t.concurrency / e2e_s
    return t.requests_per_s if t.requests_per_s is not None else 1.0


def node_count(shape: Shape, engines: int) -> int:
    """Instances for `engines` replicas: whole nodes for multi-node engines, packed GPUs otherwise."""
    if shape.tier == 3:
        return engines * shape.nodes_per_replica
    gpus_needed = engines * shape.gpus_per_replica / shape.slices_per_gpu
    return max(1, math.ceil(gpus_needed / shape.instance.gpus - 1e-9))


def monthly_cost(shape: Shape, nodes: int, request: PlanRequest, hours: float = 720.0) -> float:
    price = shape.instance.price(request.constraints.capacity_type)
    if price is None:
        raise InfeasibleError(f"no price for {shape.instance.type}", binding=["price"])
    return nodes * price * hours
