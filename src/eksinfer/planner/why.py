"""One short reason per planner choice, with the numbers behind it (the plan's `why` map)."""

from __future__ import annotations

import dataclasses

from eksinfer.catalog import InstanceSpec
from eksinfer.errors import InfeasibleError
from eksinfer.perf import max_running
from eksinfer.perf.memory import GIB, weight_bytes
from eksinfer.perf.mix import MixPoint
from eksinfer.planner.request import PlanRequest
from eksinfer.planner.search import (
    TIER1_MAX_PARAMS_B,
    TPOT_TAIL,
    TTFT_TAIL,
    Candidate,
    build_perf,
    model_tier,
    mxfp8_activations,
    weighs_next_tier,
)

TIER_PATTERN = {
    1: "one GPU per replica, replicas behind round-robin",
    2: "tensor parallel inside one node, KV-cache-aware routing",
    3: "multi-node engines (LeaderWorkerSet) with prefill/decode disaggregation",
}


def _tier(request: PlanRequest, cand: Candidate) -> str:
    model, tier = request.model, cand.shape.tier
    size = f"{model.total_params_b:.0f}B{' MoE' if model.is_moe else ''}"
    if tier == 1 and model.total_params_b > TIER1_MAX_PARAMS_B:
        native = model.native_precision
        size += f" in {weight_bytes(model, native) / GIB:.1f} GiB of {native} weights"
    text = f"tier {tier}: {size} -> {TIER_PATTERN[tier]}"
    if tier > model_tier(model) and weighs_next_tier(model):
        text += " (priced against tier 1 too: one GPU per replica comes in 8-GPU nodes only, this costs less)"
    elif tier > model_tier(model):
        text += f" (tier {model_tier(model)} had no shape that fits and meets the SLOs)"
    return text


def _parallelism(request: PlanRequest, cand: Candidate) -> str:
    s, perf = cand.shape, cand.perf
    text = f"TP {s.tp} x PP {s.pp}: {perf.weight_bytes_per_gpu / GIB:.1f} GiB of weights per GPU"
    if s.pp > 1:
        text += f"; one pipeline stage per {s.instance.type} node over {s.instance.efa_gbps:g} Gb/s EFA"
    if s.dp > 1:
        text = (
            f"DP {s.dp} x EP {s.tp * s.dp} (TP {s.tp}): each of {s.dp} attention ranks holds "
            f"{perf.weight_bytes_per_gpu / GIB:.1f} GiB (attention replicated, experts sharded) and runs its "
            "own batch and KV cache; MoE layers exchange tokens by all-to-all over NVLink "
            "(--data-parallel-size with --enable-expert-parallel)"
        )
    elif request.model.is_moe and s.gpus_per_replica > 1:
        text += "; experts spread with --enable-expert-parallel"
    if s.mig_profile:
        slices = s.instance.gpus * s.slices_per_gpu * cand.nodes
        used = cand.replicas + cand.prefill_replicas
        text += (
            f"; one {s.mig_profile} MIG slice per replica (the smallest that fits and meets the SLOs), "
            f"{s.slices_per_gpu} per GPU: {used} of {slices} slices used, {slices - used} free for other "
            "workloads"
        )
    return text


# vLLM stores FP8 K/V as E4M3 with per-tensor scales: 1.0 unless the checkpoint ships calibrated scales.
FP8_KV_CAVEAT = (
    "accuracy caveat: FP8 K/V (E4M3, per-tensor scales, 1.0 unless the checkpoint ships calibrated ones) "
    "usually costs little accuracy but more on long contexts and reasoning; check your evals, or force "
    "--kv-cache-dtype auto"
)


def _precision(request: PlanRequest, cand: Candidate) -> str:
    s, perf, t = cand.shape, cand.perf, request.traffic
    text = f"{s.precision} weights ({request.model.hf_id_for(s.precision)}), KV cache {perf.kv_cache_dtype}"
    if s.precision == "fp4":
        text += (
            " (NVFP4: 4-bit weights and activations with an FP8 scale per 16 values on FP4 tensor cores; "
            "accuracy caveat: a published ModelOpt checkpoint, usually within about 1 % of FP8 on the "
            "vendor's evals but check yours)"
        )
    if s.precision == "mxfp4" and mxfp8_activations(s):
        text += (
            " (the checkpoint's own MXFP4 routed experts, BF16 elsewhere; on this GPU FlashInfer's MoE with "
            "MXFP8 activations, VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1 as vLLM's Blackwell recipe sets and "
            "the measured B200 runs ran; accuracy caveat: activations quantized to MXFP8 in the experts, "
            "unset it for BF16 activations at about half the expert prefill rate)"
        )
    elif s.precision == "mxfp4":
        text += (
            " (the checkpoint's own MXFP4 routed experts, BF16 elsewhere: W4A16 MoE kernels, triton_kernels "
            "or Marlin)"
        )
    if s.precision == "fp8" and not s.gpu.fp8_tflops:
        text += " (weight-only FP8, W8A16 Marlin kernels: no FP8 tensor cores on this GPU)"
    if perf.kv_cache_dtype != "fp8":
        return text
    fits = max_running(perf, t.input_tokens, t.output_tokens)
    try:
        bf16 = max_running(
            build_perf(request, dataclasses.replace(s, kv_cache_dtype="auto"), perf.max_model_len),
            t.input_tokens,
            t.output_tokens,
        )
    except InfeasibleError:
        bf16 = 0
    return (
        f"{text}: half the bytes per token, {fits} sequences of this shape fit per replica against {bf16} "
        f"with a BF16 cache; {FP8_KV_CAVEAT}"
    )


def _slo(request: PlanRequest, cand: Candidate) -> str:
    ttft, which = cand.ttft_s, "mean TTFT"
    if (
        isinstance(cand.point, MixPoint) and len(cand.point.classes) > 1
    ):  # the tail lives in the slowest class
        slowest = max((c for c in cand.point.classes if c.share >= 0.01), key=lambda c: c.ttft_s)
        ttft, which = slowest.ttft_s, f"mean TTFT of the {slowest.input_tokens}-token prompts (slowest class)"
    return (
        f"{which} {ttft:.2f} s x {TTFT_TAIL:g} p99 allowance <= {request.slo.ttft_s:g} s; "
        f"mean TPOT {cand.tpot_s * 1e3:.1f} ms x {TPOT_TAIL:g} <= {request.slo.tpot_s * 1e3:g} ms"
    )


def _memory(request: PlanRequest, cand: Candidate) -> str:
    perf, t = cand.perf, request.traffic
    kv_tokens = perf.kv_capacity_tokens * perf.data_parallel_size
    full = kv_tokens // max(1, int(perf.seq_kv_tokens(t.input_tokens + t.output_tokens)))
    ranks = f" on each of {perf.data_parallel_size} DP ranks" if perf.data_parallel_size > 1 else ""
    return (
        f"{perf.num_gpu_blocks:,} KV blocks of {perf.block_size}{ranks} = {kv_tokens:,} tokens "
        f"({perf.kv_bytes_per_token:,} B/token), room for {full:,} full "
        f"{t.input_tokens}+{t.output_tokens}-token sequences; --max-model-len {perf.max_model_len:,}"
    )


def _replicas(request: PlanRequest, cand: Candidate) -> str:
    t = request.traffic
    target = (
        f"{t.concurrency} concurrent requests"
        if t.concurrency
        else f"{t.requests_per_s or 1.0:g} req/s x 1.2"
    )
    if cand.shape.mode == "disaggregated":
        text = (
            f"{cand.prefill_replicas} prefill + {cand.replicas} decode engines for {target}; "
            f"each decode engine holds {cand.batch} sequences"
        )
    else:
        text = f"{cand.replicas} replica(s) for {target}; each keeps {cand.batch} in flight within the SLOs"
    if cand.on_prem_replicas:
        text += f"; {cand.on_prem_replicas} more on on-prem GPUs (EKS Hybrid Nodes, not billed here)"
    idle = cand.nodes * cand.shape.instance.gpus - _gpus_used(cand)
    if idle > 0 and cand.shape.tier < 3:
        text += f"; {idle} GPU(s) of {cand.nodes} node(s) idle at this load"
    return text


def _gpus_used(cand: Candidate) -> int:
    s = cand.shape
    engines = cand.replicas + cand.prefill_replicas
    return -(-engines * s.gpus_per_replica // s.slices_per_gpu)


def commitment_note(inst: InstanceSpec, capacity_type: str) -> str:
    """What a capacity-block or reserved price stands for, its date and where it came from."""
    on_demand = inst.price_per_hour_usd
    if capacity_type == "capacity-block":
        vs = f", on-demand ${on_demand:,.2f}/h" if on_demand else ""
        return (
            f"Capacity Block for ML effective rate of {inst.capacity_block_date or 'an undated book'}{vs}; "
            "paid up front for the block's days, whether used or not; render with --capacity-reservation"
        )
    return (
        f"{inst.reserved_term or 'commitment'}: {inst.reserved_discount:.0%} off on-demand as of "
        f"{inst.reserved_date or 'an undated book'}; billed for the term whether used or not"
    )


def explain(request: PlanRequest, cand: Candidate, provisioning_why: str, strategy: str) -> dict[str, str]:
    s, c = cand.shape, request.constraints
    price = s.instance.price(c.capacity_type) or 0.0
    capacity = c.capacity_type
    if capacity == "spot" and s.instance.spot_discount == 0:
        capacity += " (no spot discount known for this type: priced at on-demand; add one with --prices FILE)"
    elif capacity == "spot":
        capacity += (
            f" ({s.instance.spot_discount:.0%} off on-demand, median us-east-1 spot price of "
            f"{s.instance.spot_date}; spot capacity is reclaimable and not guaranteed)"
        )
    elif capacity in ("capacity-block", "reserved"):
        capacity += f" ({commitment_note(s.instance, capacity)})"
    routing = (
        "KV-cache-aware: sends a prompt where its prefix is cached and the queue is short"
        if strategy == "kv-aware"
        else "round-robin: replicas are interchangeable and prompts share little"
    )
    mode = (
        "disaggregated: prefill engines hand KV to decode engines over NIXL/EFA, so long prompts never stall "
        "decoding (AIC rate matching 0.9 / 0.92)"
        if s.mode == "disaggregated"
        else "aggregated: chunked prefill rides inside decode steps"
    )
    if s.mode == "disaggregated" and request.traffic.is_mix:
        mode += (
            "; the gateway's decider sends prompts of 256+ uncached tokens to the prefill pool (a queue), "
            "shorter ones prefill on their decode engine"
        )
    return {
        "tier": _tier(request, cand),
        "instance": (
            f"{s.instance.type} ({s.instance.gpus} x {s.instance.gpu}) at ${price:.2f}/h {capacity} in "
            f"{s.instance.region}, {s.instance.price_book} price book of {s.instance.price_date}: cheapest "
            "shape meeting the SLOs"
        ),
        "precision": _precision(request, cand),
        "parallelism": _parallelism(request, cand),
        "memory": _memory(request, cand),
        "mode": mode,
        "replicas": _replicas(request, cand),
        "slo": _slo(request, cand),
        "provisioning": provisioning_why,
        "routing": routing,
        "cost": (
            f"{cand.nodes} x ${price:.2f}/h x 720 h = ${cand.monthly_usd:,.0f}/month; "
            "per million tokens counts prompt + output tokens at the target load"
        ),
    }
