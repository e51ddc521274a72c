"""FP4 (NVFP4) weights: bytes, FP4 tensor cores on B200 only, published checkpoints, caveats."""

from __future__ import annotations

import pytest

from eksinfer.catalog import get_gpu, get_model
from eksinfer.errors import InfeasibleError
from eksinfer.perf import bytes_per_param, weight_bytes
from eksinfer.perf import memory as mem
from eksinfer.planner import Constraints, Plan, PlanRequest, Traffic, make_plan
from eksinfer.planner.search import kv_cache_dtypes, precisions


def _plan(**constraints: object) -> Plan:
    request = PlanRequest(
        get_model("llama-3.3-70b"), Traffic(requests_per_s=10.0), constraints=Constraints(**constraints)
    )  # type: ignore[arg-type]
    return make_plan(request)


def test_nvfp4_bytes_and_fp4_tensor_cores() -> None:
    assert bytes_per_param("fp4") == 0.5625  # 4 bits + one FP8 scale per 16 weights
    model = get_model("llama-3.3-70b")
    linear = mem.non_expert_linear_params(model)
    assert weight_bytes(model, "fp4") == pytest.approx(linear * 0.5625 + model.embedding_params * 2)
    assert get_gpu("B200").tflops_for("fp4") == 9000
    assert get_gpu("H100").tflops_for("fp4") == get_gpu("H100").bf16_tflops  # no FP4 tensor cores


def test_fp4_is_searched_only_on_fp4_gpus_with_a_published_checkpoint() -> None:
    request = PlanRequest(get_model("llama-3.3-70b"))
    assert "fp4" in precisions(request.model, get_gpu("B200"), request)
    assert "fp4" not in precisions(request.model, get_gpu("H200"), request)
    kimi = PlanRequest(get_model("kimi-k2.5"))  # no NVFP4 checkpoint in the catalog
    assert "fp4" not in precisions(kimi.model, get_gpu("B200"), kimi)


def test_forced_fp4_on_b200_serves_the_nvfp4_checkpoint_with_caveats() -> None:
    plan = _plan(instance_families=("p6-b200",), precision="fp4")
    engine = plan.roles[0].engine
    assert engine.precision == "fp4"
    assert plan.model.hf_id == "nvidia/Llama-3.3-70B-Instruct-FP4"
    assert "--quantization" not in engine.vllm_args  # vLLM reads ModelOpt's hf_quant_config.json
    assert "accuracy caveat" in plan.why["precision"]
    assert plan.ground is not None
    assert any("FP4" in w for w in plan.ground.warnings)
    with pytest.raises(InfeasibleError):
        _plan(instance_families=("p5",), precision="fp4")


def test_equal_cost_keeps_fp8_over_fp4() -> None:
    plan = _plan(instance_families=("p6-b200",))  # one B200 node either way
    forced = _plan(instance_families=("p6-b200",), precision="fp4")
    assert forced.cost.monthly_usd == plan.cost.monthly_usd  # FP4 was as cheap...
    assert plan.roles[0].engine.precision == "fp8"  # ...and lost the tie to the measured, more accurate FP8


def test_nvfp4_shapes_search_the_fp8_kv_cache_their_checkpoint_declares() -> None:
    request = PlanRequest(get_model("llama-3.3-70b"))
    b200 = get_gpu("B200")
    assert kv_cache_dtypes(b200, request, "fp4") == ["fp8"]  # auto would resolve to it in vLLM >= 0.15
    assert kv_cache_dtypes(b200, request, "fp8") == ["auto", "fp8"]
    forced = PlanRequest(get_model("llama-3.3-70b"), constraints=Constraints(kv_cache_dtype="auto"))
    assert kv_cache_dtypes(b200, forced, "fp4") == ["auto"]  # what the user asked for
    engine = _plan(instance_families=("p6-b200",), precision="fp4").roles[0].engine
    flag = engine.vllm_args.index("--kv-cache-dtype")
    assert engine.vllm_args[flag + 1] == "fp8"
