"""Hand-built plans for every tier and node mode (until the planner writes them; numbers are plausible, not
planner output): tier 1 Qwen3-32B FP8 on one L40S, tier 2 Llama-3.3-70B TP 8 on p5, tier 3 Kimi-K2.5 across
two p5en nodes (PP 2, P/D disaggregated over NIXL), plus MIG, DRA (managed node group) and hybrid variants."""

from __future__ import annotations

from typing import Any

from eksinfer.planner.schema import Plan

_ARGS = ["--max-model-len", "{len}", "--gpu-memory-utilization", "0.92", "--block-size", "16"]


def _engine(
    tp: int, pp: int, *, precision: str, ep: bool = False, max_len: int = 32768, nodes: int = 1
) -> dict[str, Any]:
    args = [a.format(len=max_len) for a in _ARGS] + ["--tensor-parallel-size", str(tp)]
    if pp > 1:
        args += ["--pipeline-parallel-size", str(pp)]
    if ep:
        args.append("--enable-expert-parallel")
    return {
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "expert_parallel": ep,
        "precision": precision,
        "kv_cache_dtype": "fp8" if precision != "bf16" else "auto",
        "max_model_len": max_len,
        "gpu_memory_utilization": 0.92,
        "block_size": 16,
        "enable_prefix_caching": True,
        "max_num_seqs": 256,
        "max_num_batched_tokens": 8192,
        "gpus_per_replica": tp * pp,
        "nodes_per_replica": nodes,
        "vllm_args": args,
    }


def _instance(kind: str) -> dict[str, Any]:
    table = {
        "g6e.xlarge": ("g6e", "L40S", 1, 48.0, 4, 32.0, 0.0, 1.861),
        "p5.48xlarge": ("p5", "H100", 8, 80.0, 192, 2048.0, 3200.0, 55.04),
        "p5en.48xlarge": ("p5en", "H200", 8, 141.0, 192, 2048.0, 3200.0, 63.30),
    }
    family, gpu, gpus, mem, vcpus, host_mem, efa, price = table[kind]
    return {
        "type": kind,
        "family": family,
        "gpu": gpu,
        "gpus": gpus,
        "gpu_memory_gib": mem,
        "vcpus": vcpus,
        "memory_gib": host_mem,
        "efa_gbps": efa,
        "capacity_type": "on-demand",
        "price_per_hour_usd": price,
        "price_date": "2026-08-01",
    }


def _base(name: str, tier: int, model: dict[str, Any], instance: str, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "tier": tier,
        "mode": "aggregated",
        "model": model,
        "traffic": {
            "input_tokens": 2000,
            "output_tokens": 300,
            "requests_per_s": 4.0,
            "shared_prefix_ratio": 0.5,
        },
        "slo": {"preset": "conversational", "ttft_s": 2.0, "tpot_s": 0.05},
        "instance": _instance(instance),
        "roles": [],
        "nodes": {"provisioning": "auto-mode", "total_nodes": 2, "max_nodes": 4, "node_startup_s": 420.0},
        "routing": {"strategy": "kv-aware", "gateway_preset": "kv-aware"},
        "prediction": {
            "ttft_s": 0.6,
            "tpot_s": 0.03,
            "throughput_tokens_per_s": 1200.0,
            "requests_per_s": 4.0,
            "max_concurrency_per_replica": 48,
            "weight_gib_per_gpu": 32.0,
            "kv_cache_gib_per_replica": 10.0,
            "num_gpu_blocks": 4000,
            "load_time_s": 90.0,
        },
        "cost": {"monthly_usd": 2680.0, "per_million_tokens_usd": 1.1},
        "why": {"tier": "hand-built test plan"},
    }
    for key, value in over.items():
        doc[key] = (
            {**doc[key], **value} if isinstance(doc.get(key), dict) and isinstance(value, dict) else value
        )
    return doc


QWEN = {
    "id": "qwen3-32b",
    "hf_id": "Qwen/Qwen3-32B-FP8",
    "total_params_b": 32.8,
    "active_params_b": 32.8,
    "is_moe": False,
    "attention": "gqa",
    "max_context": 40960,
}
LLAMA = {
    "id": "llama-3.3-70b",
    "hf_id": "meta-llama/Llama-3.3-70B-Instruct",
    "total_params_b": 70.6,
    "active_params_b": 70.6,
    "is_moe": False,
    "attention": "gqa",
    "max_context": 131072,
}
KIMI = {
    "id": "kimi-k2.5",
    "hf_id": "moonshotai/Kimi-K2.5",
    "total_params_b": 1000.0,
    "active_params_b": 32.0,
    "is_moe": True,
    "attention": "mla",
    "max_context": 262144,
}


# The Bedrock tier `eksinfer plan` adds for Qwen3-32B (examples/tier1/plan.json): cascade rules and panels.
QWEN_BEDROCK = {
    "kind": "bedrock",
    "region": "us-east-1",
    "model_id": "qwen.qwen3-32b-v1:0",
    "inference_profile": False,
    "match": "same",
}


def tier1(provisioning: str = "auto-mode", **over: Any) -> Plan:
    doc = _base("qwen3-32b", 1, QWEN, "g6e.xlarge", nodes={"provisioning": provisioning}, **over)
    doc["roles"] = [{"name": "engine", "replicas": 2, "engine": _engine(1, 1, precision="fp8")}]
    return Plan.model_validate(doc)


def tier2(provisioning: str = "karpenter", **over: Any) -> Plan:
    doc = _base(
        "llama-70b",
        2,
        LLAMA,
        "p5.48xlarge",
        nodes={"provisioning": provisioning, "total_nodes": 1, "max_nodes": 3, "node_startup_s": 600.0},
        prediction={"weight_gib_per_gpu": 8.8, "max_concurrency_per_replica": 120, "load_time_s": 240.0},
        traffic={"shared_prefix_ratio": 0.0},
        **over,
    )
    doc["roles"] = [
        {"name": "engine", "replicas": 2, "engine": _engine(4, 1, precision="fp8", max_len=65536)}
    ]
    return Plan.model_validate(doc)


def tier3(provisioning: str = "karpenter", **over: Any) -> Plan:
    doc = _base(
        "kimi-k25",
        3,
        KIMI,
        "p5en.48xlarge",
        mode="disaggregated",
        nodes={"provisioning": provisioning, "total_nodes": 4, "max_nodes": 8, "node_startup_s": 900.0},
        prediction={"weight_gib_per_gpu": 37.0, "max_concurrency_per_replica": 64, "load_time_s": 720.0},
        slo={"preset": "batch", "ttft_s": 5.0, "tpot_s": 0.08},
        **over,
    )
    engine = _engine(8, 2, precision="int4", ep=True, max_len=131072, nodes=2)
    doc["roles"] = [
        {"name": "prefill", "replicas": 1, "engine": engine},
        {"name": "decode", "replicas": 1, "engine": engine},
    ]
    return Plan.model_validate(doc)


def mig() -> Plan:
    doc = tier1("karpenter").model_dump()
    doc["name"] = "qwen3-8b-mig"
    doc["instance"] = _instance("p5.48xlarge")
    doc["nodes"] = {**doc["nodes"], "mig_profile": "all-3g.40gb", "total_nodes": 1, "max_nodes": 2}
    doc["model"] = {
        **QWEN,
        "id": "qwen3-8b",
        "hf_id": "Qwen/Qwen3-8B",
        "total_params_b": 8.2,
        "active_params_b": 8.2,
    }
    return Plan.model_validate(doc)


def dra() -> Plan:
    doc = tier2("managed-node-group").model_dump()
    doc["name"] = "llama-70b-dra"
    doc["nodes"] = {**doc["nodes"], "needs_dra": True}
    return Plan.model_validate(doc)


def hybrid() -> Plan:
    doc = tier2("auto-mode").model_dump()
    doc["name"] = "llama-70b-hybrid"
    doc["on_prem"] = {"gpu": "H100", "gpus": 8, "replicas": 1}
    return Plan.model_validate(doc)


def aggregated_tier3() -> Plan:
    doc = tier3("auto-mode").model_dump()
    doc["name"] = "glm-5"
    doc["mode"] = "aggregated"
    doc["model"] = {
        **KIMI,
        "id": "glm-5",
        "hf_id": "zai-org/GLM-5-FP8",
        "total_params_b": 744.0,
        "active_params_b": 40.0,
    }
    doc["roles"] = [{**doc["roles"][1], "name": "engine", "replicas": 2}]
    return Plan.model_validate(doc)


# (case name, plan factory) for golden files and schema tests: every tier in every mode it supports.
CASES = {
    "tier1-auto-mode": lambda: tier1("auto-mode"),
    "tier1-karpenter": lambda: tier1("karpenter"),
    "tier1-managed-node-group": lambda: tier1("managed-node-group"),
    "tier2-karpenter": lambda: tier2("karpenter"),
    "tier2-auto-mode": lambda: tier2("auto-mode"),
    "tier3-karpenter-pd": lambda: tier3("karpenter"),
    "tier3-auto-mode-aggregated": aggregated_tier3,
    "mig-karpenter": mig,
    "dra-managed-node-group": dra,
    "hybrid-auto-mode": hybrid,
}
