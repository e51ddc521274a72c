"""gpt-oss-120b end to end: MXFP4 weight bytes, which MoE kernel family its experts take, a one-H100 engine
planned and rendered into manifests that validate against their schemas, and the planner's own pick."""

from __future__ import annotations

import dataclasses

import pytest

from eksinfer.catalog import get_gpu, get_model
from eksinfer.deploy.render import build_tree
from eksinfer.deploy.validate import validate_objects
from eksinfer.errors import UsageError
from eksinfer.perf import build_engine_perf, bytes_per_param, weight_bytes
from eksinfer.perf import memory as mem
from eksinfer.perf.engine import blackwell_moe
from eksinfer.planner import Constraints, Plan, PlanRequest, Traffic, make_plan
from eksinfer.planner.build import build_plan
from eksinfer.planner.evaluate import evaluate_aggregated
from eksinfer.planner.search import (
    Misses,
    build_perf,
    enumerate_shapes,
    expert_parallel,
    model_tier,
    precisions,
)

MODEL = get_model("gpt-oss-120b")


def test_mxfp4_weights_take_0_53_bytes_per_expert_param_and_bf16_elsewhere() -> None:
    assert bytes_per_param("mxfp4") == 0.53125  # 4-bit E2M1 + one E8M0 byte per 32 weights
    assert bytes_per_param("fp4") == 0.5625  # NVFP4 stays a different format
    rest = mem.non_expert_linear_params(MODEL) + MODEL.embedding_params
    total = weight_bytes(MODEL, "mxfp4")
    assert total == pytest.approx(MODEL.routed_expert_params * 0.53125 + rest * 2)
    assert total / 1e9 == pytest.approx(65.2, abs=0.1)  # 60.7 GiB: fits one 80 GB H100


def test_mxfp4_is_native_only_and_its_experts_take_the_right_kernel_family() -> None:
    request = PlanRequest(MODEL)
    assert precisions(MODEL, get_gpu("H100"), request) == ["mxfp4"]
    llama = PlanRequest(get_model("llama-3.3-70b"), constraints=Constraints(precision="mxfp4"))
    assert precisions(llama.model, get_gpu("H100"), llama) == []  # no MXFP4 checkpoint to serve
    with pytest.raises(UsageError) as err:  # and the flag says why, rather than "fits no shape"
        llama.validate()
    assert err.value.field == "--precision"
    assert "bf16" in str(err.value)
    # FlashInfer's MXFP4 MoE on Blackwell (the B300-fitted family), W4A16 triton_kernels / Marlin on Hopper
    assert blackwell_moe(get_gpu("B200"), "mxfp4")
    assert not blackwell_moe(get_gpu("H100"), "mxfp4")


def test_one_h100_holds_the_model_and_renders_valid_manifests() -> None:
    request = PlanRequest(
        MODEL, Traffic(requests_per_s=0.5), constraints=Constraints(instance_families=("p5",))
    )
    tier = model_tier(MODEL)
    assert tier == 1  # 117 B parameters, but 60.7 GiB of MXFP4 weights: one GPU per replica
    [shape] = [
        s
        for s in enumerate_shapes(request, tier)
        if (s.mode, s.tp, s.pp, s.dp, s.kv_cache_dtype) == ("aggregated", 1, 1, 1, "auto")
    ]
    cand = evaluate_aggregated(request, shape, Misses())
    assert cand is not None
    assert cand.perf.weight_bytes_per_gpu / mem.GIB == pytest.approx(60.7, abs=0.1)
    assert cand.perf.max_model_len >= 8192
    plan = build_plan(request, cand, [])
    engine = plan.roles[0].engine
    assert (engine.precision, engine.tensor_parallel_size, engine.gpus_per_replica) == ("mxfp4", 1, 1)
    assert "--quantization" not in engine.vllm_args  # vLLM reads quant_method mxfp4 from config.json
    assert "--trust-remote-code" not in engine.vllm_args  # GptOssForCausalLM is in vLLM itself
    assert "--enable-expert-parallel" not in engine.vllm_args  # one GPU
    tree = build_tree(plan)
    assert [str(p) for p in validate_objects(tree.all_objects())] == []
    [container] = [
        c
        for o in tree.objects.values()
        if o["kind"] in ("Deployment", "LeaderWorkerSet")
        for c in _containers(o)
        if c.get("command", [])[:2] == ["vllm", "serve"]
    ]
    assert container["command"] == ["vllm", "serve", "openai/gpt-oss-120b"]
    args = container["args"]
    # the vLLM gpt-oss recipe's function calling and harmony reasoning parsers
    assert args[args.index("--tool-call-parser") + 1] == "openai"
    assert args[args.index("--reasoning-parser") + 1] == "openai_gptoss"
    assert "--enable-auto-tool-choice" in args
    assert args[args.index("--max-num-batched-tokens") + 1] == "8192"  # the recipe's value on H100


def _containers(obj: dict[str, object]) -> list[dict[str, object]]:
    spec = obj["spec"]
    assert isinstance(spec, dict)
    if obj["kind"] == "Deployment":
        return list(spec["template"]["spec"]["containers"])
    return list(spec["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"])


def test_planner_picks_an_mxfp4_plan_and_says_it_is_held_out_ground() -> None:
    plan = make_plan(
        PlanRequest(MODEL, Traffic(requests_per_s=2.0), constraints=Constraints(instance_families=("p5",)))
    )
    assert plan.roles[0].engine.precision == "mxfp4"
    assert plan.model.hf_id == "openai/gpt-oss-120b"
    assert plan.ground is not None
    assert not plan.ground.measured
    assert any("MXFP4" in w for w in plan.ground.warnings)
    assert "MXFP4" in plan.why["precision"]


def test_a_light_load_takes_the_cheaper_tier_when_one_gpu_means_an_8_gpu_node() -> None:
    # One GPU with 61 GiB free comes only in 8-GPU nodes, so a model in tier 1 by its weight bytes is also
    # priced in tier 2: at 1 request/s TP over a 4-GPU g6 / g6e node beats 7 idle GPUs of a p4de
    def plan(*families: str) -> Plan:
        constraints = Constraints(instance_families=families)
        return make_plan(PlanRequest(MODEL, Traffic(requests_per_s=1.0), constraints=constraints))

    both, a100 = plan(), plan("p4de")
    # at equal cost the lower tier stays: on one p4de node TP 1 and TP 2 cost the same
    assert (a100.tier, a100.roles[0].engine.tensor_parallel_size) == (1, 1)
    assert (both.tier, both.instance.type.split(".")[1]) == (2, "12xlarge")  # a 4-GPU g6 / g6e node
    assert both.cost.monthly_usd < a100.cost.monthly_usd
    assert "priced against tier 1 too" in both.why["tier"]


def test_on_blackwell_the_plan_deploys_the_measured_mxfp8_activation_path() -> None:
    # vLLM's gpt-oss recipe for B200 and both measured B200 campaigns set VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8:
    # the plan renders it into the engine container and predicts experts at the FP8 rate; Hopper plans
    # keep vLLM's default (no variable)
    def plan(family: str) -> Plan:
        constraints = Constraints(instance_families=(family,))
        return make_plan(PlanRequest(MODEL, Traffic(requests_per_s=2.0), constraints=constraints))

    b200, h100 = plan("p6-b200"), plan("p5")
    assert b200.roles[0].engine.env == {"VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8": "1"}
    assert "MXFP8 activations" in b200.why["precision"]
    assert "accuracy caveat" in b200.why["precision"]
    assert h100.roles[0].engine.env == {}
    args = b200.roles[0].engine.vllm_args  # the recipe's CUDA-graph range comes with it
    assert args[args.index("--max-cudagraph-capture-size") + 1] == "2048"
    assert "--max-cudagraph-capture-size" not in h100.roles[0].engine.vllm_args
    [container] = [
        c
        for o in build_tree(b200).objects.values()
        if o["kind"] in ("Deployment", "LeaderWorkerSet")
        for c in _containers(o)
        if c.get("command", [])[:2] == ["vllm", "serve"]
    ]
    assert {"name": "VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8", "value": "1"} in container["env"]
    request = PlanRequest(MODEL, Traffic(requests_per_s=2.0))
    shape = next(
        s
        for s in enumerate_shapes(request, 1)
        if s.instance.family == "p6-b200" and s.tp == 1 and s.kv_cache_dtype == "auto"
    )
    assert build_perf(request, shape, 8192).step_time_s(
        prefill_tokens=8192, prefill_attention_pairs=8192 * 8192, decode_seqs=0, decode_context_tokens=0
    ) < build_engine_perf(MODEL, shape.gpu, precision="mxfp4", max_model_len=8192).step_time_s(
        prefill_tokens=8192, prefill_attention_pairs=8192 * 8192, decode_seqs=0, decode_context_tokens=0
    )  # FP8 tensor cores for the experts' prefill, against BF16 ones without the variable


def test_gpt_oss_on_several_gpus_shards_its_experts_by_tp_as_measured() -> None:
    # vLLM's gpt-oss recipe passes --tensor-parallel-size only, and InferenceX's gpt-oss runs (the held-out
    # set) have no EP: a TP 2 plan renders no --enable-expert-parallel and predicts TP-sharded experts,
    # where another MoE model at TP 2 gets expert parallelism
    request = PlanRequest(MODEL, Traffic(requests_per_s=2.0))
    shape = next(
        s for s in enumerate_shapes(request, 2) if s.tp == 2 and s.dp == 1 and s.instance.family == "p5"
    )
    assert not expert_parallel(MODEL, shape)
    cand = evaluate_aggregated(request, shape, Misses())
    assert cand is not None
    assert not cand.perf.expert_parallel
    engine = build_plan(request, cand, []).roles[0].engine
    assert "--enable-expert-parallel" not in engine.vllm_args
    assert not engine.expert_parallel
    other = get_model("qwen3-235b-a22b")
    assert expert_parallel(other, dataclasses.replace(shape, precision="fp8"))
