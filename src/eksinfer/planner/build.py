"""Turn the winning candidate into the Plan document: vLLM arguments, nodes, routing, cost and the why."""

from __future__ import annotations

import json
import re
from typing import Any

from eksinfer.catalog import PRICE_BOOKS, get_gpu, get_instance, load_price_book, price_regions
from eksinfer.perf import EnginePerf, load_time_s, max_running
from eksinfer.perf.memory import GIB
from eksinfer.perf.mix import MixPoint, max_running_mix
from eksinfer.perf.queueing import knee_requests_per_s, open_loop
from eksinfer.planner.evaluate import open_loop_curve
from eksinfer.planner.fallback import bedrock_fallback
from eksinfer.planner.ground import assess
from eksinfer.planner.phases import early, stack
from eksinfer.planner.request import PlanRequest
from eksinfer.planner.schema import (
    Plan,
    PlanAlternative,
    PlanClassPrediction,
    PlanCost,
    PlanEngine,
    PlanGround,
    PlanInstance,
    PlanLoadPoint,
    PlanModel,
    PlanNodes,
    PlanOnPrem,
    PlanPrediction,
    PlanPriceComparison,
    PlanPromptClass,
    PlanRole,
    PlanRouting,
    PlanSlo,
    PlanTraffic,
    Provisioning,
)
from eksinfer.planner.search import (
    MXFP4_MXFP8_ENV,
    Candidate,
    demand_requests_per_s,
    expert_parallel,
    mxfp8_activations,
)

HOURS_PER_MONTH = 720.0
GPU_NODE_BOOT_S = 90.0  # EC2 GPU instance to Ready with drivers (Auto Mode / Karpenter NVIDIA AMIs)
IMAGE_PULL_S = 120.0  # a ~10 GB vLLM image without a pre-pulled snapshot or SOCI
# Architectures vLLM runs without the model repository's own code.
NATIVE_ARCHITECTURES = {
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "MixtralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM",
    "DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM",
    "GlmMoeDsaForCausalLM",
    "GptOssForCausalLM",
}
# vLLM's default is min(2 x max_num_seqs, 512) tokens (VllmConfig._set_cudagraph_sizes); a bigger step runs
# without a graph, which the step model does not price (docs/planner.md "InferenceX's runs read as they ran")
RECIPE_CUDAGRAPH_TOKENS = 2048
NIXL_CONFIG = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"}, separators=(",", ":"))


def dns_name(model_id: str) -> str:
    """A DNS-1035 label from a model id (`llama-3.1-8b` -> `llama-3-1-8b`), for Kubernetes object names."""
    name = re.sub(r"[^a-z0-9]+", "-", model_id.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"m-{name}".rstrip("-")
    return name[:63].rstrip("-")


def vllm_args(request: PlanRequest, cand: Candidate, role: str) -> list[str]:
    shape, perf, model = cand.shape, cand.perf, request.model
    max_seqs = _max_seqs_per_rank(cand, role)
    args = [
        "--tensor-parallel-size", str(shape.tp),
        "--pipeline-parallel-size", str(shape.pp),
        "--max-model-len", str(perf.max_model_len),
        "--kv-cache-dtype", perf.kv_cache_dtype,
        "--gpu-memory-utilization", f"{perf.gpu_memory_utilization:g}",
        "--block-size", str(perf.block_size),
        "--enable-prefix-caching",
        "--max-num-seqs", str(max_seqs),
        "--max-num-batched-tokens", str(perf.max_num_batched_tokens),
    ]  # fmt: skip
    if shape.dp > 1:
        args += ["--data-parallel-size", str(shape.dp)]
    if expert_parallel(model, shape):
        args.append("--enable-expert-parallel")
    if shape.precision == "fp8" and model.native_precision != "fp8" and model.hf_id_for("fp8") == model.hf_id:
        args += ["--quantization", "fp8"]
    if model.architecture not in NATIVE_ARCHITECTURES:
        args.append("--trust-remote-code")
    if shape.mode == "disaggregated":
        args += ["--kv-transfer-config", NIXL_CONFIG]
    if mxfp8_activations(shape):
        # vLLM's gpt-oss B200 recipe: prefill steps of up to 2,048 tokens replay CUDA graphs
        args += ["--max-cudagraph-capture-size", str(RECIPE_CUDAGRAPH_TOKENS)]
    return args


def _max_seqs_per_rank(cand: Candidate, role: str) -> int:
    """--max-num-seqs: the planned batch, split over data-parallel ranks (each has its own scheduler)."""
    if role == "prefill":
        return cand.perf.max_num_seqs
    return max(1, -(-cand.batch // cand.shape.dp))


def _engine(request: PlanRequest, cand: Candidate, role: str) -> PlanEngine:
    shape, perf = cand.shape, cand.perf
    return PlanEngine(
        tensor_parallel_size=shape.tp,
        pipeline_parallel_size=shape.pp,
        expert_parallel=expert_parallel(request.model, shape),
        data_parallel_size=shape.dp,
        precision=shape.precision,
        kv_cache_dtype=perf.kv_cache_dtype,
        max_model_len=perf.max_model_len,
        gpu_memory_utilization=perf.gpu_memory_utilization,
        block_size=perf.block_size,
        enable_prefix_caching=True,
        max_num_seqs=_max_seqs_per_rank(cand, role),
        max_num_batched_tokens=perf.max_num_batched_tokens,
        gpus_per_replica=shape.gpus_per_replica,
        nodes_per_replica=shape.nodes_per_replica,
        vllm_args=vllm_args(request, cand, role),
        env=dict(MXFP4_MXFP8_ENV) if mxfp8_activations(shape) else {},
    )


def provisioning(request: PlanRequest, cand: Candidate) -> tuple[Provisioning, str]:
    """Node provisioning and why (Karpenter v1, EKS Auto Mode, NVIDIA GPU Operator: docs/deploy.md)."""
    c = request.constraints
    if early(c.phase):
        return "auto-mode", (
            f"phase {c.phase}: EKS Auto Mode, AWS runs the GPU drivers, device plugin and node scaling; "
            "Karpenter arrives in phase 2"
        )
    if c.phase is not None:
        return "karpenter", (
            f"phase {c.phase}: Karpenter NodePool + EC2NodeClass (capacity reservations, placement groups, "
            "MIG and custom AMIs), GPU Operator on top"
        )
    if c.needs_dra:
        return "managed-node-group", (
            "DRA requested: Karpenter and Auto Mode skip pods that claim DRA devices, so managed node groups "
            "with Cluster Autoscaler"
        )
    if c.capacity_type == "capacity-block":
        return "karpenter", (
            "Capacity Block for ML: Karpenter's EC2NodeClass launches into the reservation (render "
            "--capacity-reservation cr-...); GPU Operator on top"
        )
    if c.needs_mig or c.custom_ami:
        what = "MIG partitions (GPU Operator MIG manager)" if c.needs_mig else "a custom AMI"
        return (
            "karpenter",
            f"{what} need node configuration Auto Mode keeps read-only: Karpenter + GPU Operator",
        )
    if cand.shape.tier == 3:
        return "karpenter", (
            "multi-node EFA groups: Karpenter's EC2NodeClass can take capacity reservations and a cluster "
            "placement group for p-family nodes (render --capacity-reservation, --placement-group); GPU "
            "Operator on top"
        )
    return (
        "auto-mode",
        "EKS Auto Mode: quickest start, AWS runs the GPU drivers, device plugin and node scaling",
    )


LOAD_FRACTIONS = (0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def _saturation(request: PlanRequest, cand: Candidate) -> dict[str, Any]:
    """Knee, saturation and the latency curve of the deployment under Poisson arrivals (aggregated)."""
    if cand.shape.mode != "aggregated":
        return {}
    curve = open_loop_curve(request, cand)
    n = cand.replicas
    cap = curve.capacity_requests_per_s
    points = []
    for fraction in LOAD_FRACTIONS:
        p = open_loop(curve, cap * fraction)
        ttft = None if p.saturated else round(p.ttft_s, 4)
        points.append(
            PlanLoadPoint(requests_per_s=round(n * cap * fraction, 3), ttft_s=ttft, tpot_s=round(p.tpot_s, 5))
        )
    return {
        "knee_requests_per_s": round(n * knee_requests_per_s(curve), 3),
        "saturation_requests_per_s": round(n * cap, 3),
        "load_curve": points,
    }


def _prediction(request: PlanRequest, cand: Candidate) -> PlanPrediction:
    perf: EnginePerf = cand.perf
    t = request.traffic
    replicas = cand.replicas
    return PlanPrediction(
        ttft_s=round(cand.ttft_s, 4),
        tpot_s=round(cand.tpot_s, 5),
        throughput_tokens_per_s=round(cand.point.output_tokens_per_s * replicas, 1),
        requests_per_s=round(cand.requests_per_s, 3),
        max_concurrency_per_replica=max_running_mix(perf, t.classes)
        if t.is_mix
        else max_running(perf, t.input_tokens, t.output_tokens),
        weight_gib_per_gpu=round(perf.weight_bytes_per_gpu / GIB, 2),
        kv_cache_gib_per_replica=round(perf.kv_cache_bytes_per_gpu * perf.gpus / GIB, 2),
        num_gpu_blocks=perf.num_gpu_blocks,
        load_time_s=round(load_time_s(perf), 1),
        **_saturation(request, cand),
        classes=_classes(cand),
    )


def _classes(cand: Candidate) -> list[PlanClassPrediction]:
    """Each class of a prompt mix: its TTFT (client-seen; P/D: prefill hop included) and where it prefills."""
    if not isinstance(cand.point, MixPoint) or len(cand.point.classes) < 2:
        return []
    pd = cand.shape.mode == "disaggregated"
    return [
        PlanClassPrediction(
            share=round(c.share, 4),
            input_tokens=c.input_tokens,
            output_tokens=c.output_tokens,
            ttft_s=round(c.ttft_s, 4),
            remote_prefill=pd and c.remote,
        )
        for c in cand.point.classes
    ]


def _cost(request: PlanRequest, cand: Candidate) -> PlanCost:
    t = request.traffic
    rps = demand_requests_per_s(request, cand.point.e2e_s)
    tokens_month = rps * (t.input_tokens + t.output_tokens) * 3600 * HOURS_PER_MONTH
    return PlanCost(
        hours_per_month=HOURS_PER_MONTH,
        monthly_usd=round(cand.monthly_usd, 2),
        per_million_tokens_usd=round(cand.monthly_usd / tokens_month * 1e6, 4),
        comparisons=_comparisons(request, cand),
    )


def _comparisons(request: PlanRequest, cand: Candidate) -> list[PlanPriceComparison]:
    """The same nodes priced by every other dated book (the 2025 book's $98.32 p5 is history, not today)."""
    inst, c = cand.shape.instance, request.constraints
    out = []
    for book in PRICE_BOOKS:
        if book == inst.price_book:
            continue
        as_of = str(load_price_book(book).get("as_of", ""))
        price = None
        if inst.region in price_regions(book):
            price = get_instance(inst.type, prices=book, region=inst.region).price(c.capacity_type)
        out.append(
            PlanPriceComparison(
                book=book,
                as_of=as_of,
                price_per_hour_usd=None if price is None else round(price, 4),
                monthly_usd=None if price is None else round(price * cand.nodes * HOURS_PER_MONTH, 2),
            )
        )
    return out


def _ground(request: PlanRequest, prediction: PlanPrediction, cand: Candidate) -> PlanGround:
    g = assess(request, cand)

    def span(value: float, factors: tuple[float, float], digits: int) -> tuple[float, float]:
        return (round(value * factors[0], digits), round(value * factors[1], digits))

    return PlanGround(
        measured=g.measured,
        basis=g.basis,
        warnings=list(g.warnings),
        ttft_s=span(prediction.ttft_s, g.band.ttft, 4),
        tpot_s=span(prediction.tpot_s, g.band.tpot, 5),
        throughput_tokens_per_s=span(prediction.throughput_tokens_per_s, g.band.tokens, 1),
    )


def alternative(request: PlanRequest, cand: Candidate) -> PlanAlternative:
    s = cand.shape
    return PlanAlternative(
        instance_type=s.instance.type + (f" ({s.mig_profile})" if s.mig_profile else ""),
        mode=s.mode,
        tensor_parallel_size=s.tp,
        pipeline_parallel_size=s.pp,
        data_parallel_size=s.dp,
        precision=s.precision,
        kv_cache_dtype="fp8" if s.kv_cache_dtype == "fp8" else "auto",
        replicas=cand.replicas + cand.prefill_replicas,
        monthly_usd=round(cand.monthly_usd, 2),
        per_million_tokens_usd=0.0,
        ttft_s=round(cand.ttft_s, 4),
        tpot_s=round(cand.tpot_s, 5),
        measured=assess(request, cand).measured,
    )


def build_plan(request: PlanRequest, cand: Candidate, runners_up: list[Candidate]) -> Plan:
    """Assemble the Plan for `cand`; `runners_up` become the alternatives, best first."""
    from eksinfer.planner.why import explain

    shape, model, t = cand.shape, request.model, request.traffic
    prov, prov_why = provisioning(request, cand)
    if shape.mode == "aggregated":
        roles = [PlanRole(name="engine", replicas=cand.replicas, engine=_engine(request, cand, "engine"))]
    else:
        roles = [
            PlanRole(
                name="prefill", replicas=cand.prefill_replicas, engine=_engine(request, cand, "prefill")
            ),
            PlanRole(name="decode", replicas=cand.replicas, engine=_engine(request, cand, "decode")),
        ]
    kv_aware = shape.tier > 1 or (t.shared_prefix_ratio >= 0.3 and cand.replicas > 1)
    phase = request.constraints.phase
    if phase is not None:  # the migration path: round-robin in phase 1, KV-aware from 1.5 on
        kv_aware = phase != "1"
    strategy = "kv-aware" if kv_aware else "round-robin"
    cost = _cost(request, cand)
    alternatives = []
    for alt in runners_up:
        entry = alternative(request, alt)
        per_m = cost.per_million_tokens_usd * alt.monthly_usd / cand.monthly_usd if cand.monthly_usd else 0.0
        alternatives.append(entry.model_copy(update={"per_million_tokens_usd": round(per_m, 4)}))
    prediction = _prediction(request, cand)
    instance = _instance(request, cand)
    fallback, fallback_why = bedrock_fallback(request, instance.region)
    return Plan(
        name=dns_name(model.id),
        tier=shape.tier,
        mode=shape.mode,
        model=PlanModel(
            id=model.id,
            hf_id=model.hf_id_for(shape.precision),
            total_params_b=round(model.total_params_b, 2),
            active_params_b=round(model.active_params_b, 2),
            is_moe=model.is_moe,
            attention=model.attention,
            max_context=model.max_context,
        ),
        traffic=PlanTraffic(
            input_tokens=t.input_tokens,
            output_tokens=t.output_tokens,
            requests_per_s=(1.0 if t.requests_per_s is None else t.requests_per_s)
            if t.concurrency is None
            else None,
            concurrency=t.concurrency,
            shared_prefix_ratio=t.shared_prefix_ratio,
            prompt_mix=[
                PlanPromptClass(share=c.share, input_tokens=c.input_tokens, output_tokens=c.output_tokens)
                for c in t.prompt_mix
            ],
        ),
        slo=PlanSlo(preset=request.slo.preset, ttft_s=request.slo.ttft_s, tpot_s=request.slo.tpot_s),
        instance=instance,
        roles=roles,
        nodes=PlanNodes(
            provisioning=prov,
            total_nodes=cand.nodes,
            max_nodes=request.constraints.max_nodes
            or max(cand.nodes + shape.nodes_per_replica, 2 * cand.nodes),
            mig_profile=f"all-{shape.mig_profile}" if shape.mig_profile else None,
            needs_dra=request.constraints.needs_dra,
            node_startup_s=round(GPU_NODE_BOOT_S + IMAGE_PULL_S + prediction.load_time_s, 1),
        ),
        routing=PlanRouting(strategy=strategy, gateway_preset=strategy),
        prediction=prediction,
        ground=_ground(request, prediction, cand),
        cost=cost,
        on_prem=_on_prem(request, cand),
        fallback=fallback,
        stack=None if phase is None else stack(phase, request.constraints.without),
        why={**explain(request, cand, prov_why, strategy), "fallback": fallback_why},
        alternatives=alternatives,
    )


def _instance(request: PlanRequest, cand: Candidate) -> PlanInstance:
    from eksinfer.planner.why import commitment_note

    inst = cand.shape.instance
    price = inst.price(request.constraints.capacity_type) or 0.0
    return PlanInstance(
        type=inst.type,
        family=inst.family,
        gpu=inst.gpu,
        gpus=inst.gpus,
        gpu_memory_gib=get_gpu(inst.gpu).memory_gib,  # the whole GPU, also when MIG slices it
        vcpus=inst.vcpus,
        memory_gib=inst.memory_gib,
        efa_gbps=inst.efa_gbps,
        capacity_type=request.constraints.capacity_type,
        price_per_hour_usd=round(price, 4),
        price_date=inst.price_date,
        region=inst.region,
        price_book=inst.price_book,
        price_source=inst.price_source,
        spot_price_date=(inst.spot_date or None) if request.constraints.capacity_type == "spot" else None,
        commitment=commitment_note(inst, request.constraints.capacity_type)
        if request.constraints.capacity_type in ("capacity-block", "reserved")
        else None,
    )


def _on_prem(request: PlanRequest, cand: Candidate) -> PlanOnPrem | None:
    pool = request.constraints.on_prem
    if pool is None or cand.on_prem_replicas == 0:
        return None
    return PlanOnPrem(gpu=pool.gpu, gpus=pool.gpus, replicas=cand.on_prem_replicas)
