"""Planner end to end on the catalog: the issue's tier examples, cost arithmetic, infeasible handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eksinfer.catalog import get_model, load_model_config
from eksinfer.errors import InfeasibleError, UnknownNameError, UsageError
from eksinfer.planner import Constraints, OnPremPool, Plan, PlanRequest, Slo, Traffic, dns_name, make_plan
from eksinfer.planner.schema import PLAN_SCHEMA_VERSION


def _plan(
    model_id: str, traffic: Traffic | None = None, slo: Slo | None = None, **constraints: object
) -> Plan:
    request = PlanRequest(get_model(model_id), traffic or Traffic(), slo or Slo(), Constraints(**constraints))  # type: ignore[arg-type]
    return make_plan(request)


def test_qwen3_32b_fp8_is_tier_1_on_one_gpu() -> None:
    plan = _plan("qwen3-32b", precision="fp8")
    engine = plan.roles[0].engine
    assert plan.tier == 1
    assert plan.mode == "aggregated"
    assert (engine.tensor_parallel_size, engine.pipeline_parallel_size, engine.gpus_per_replica) == (1, 1, 1)
    assert plan.model.hf_id == "Qwen/Qwen3-32B-FP8"
    assert plan.routing.strategy == "round-robin"
    assert plan.name == "qwen3-32b"
    assert plan.prediction.ttft_s * 2 <= 2.0  # conversational TTFT with the p99 allowance
    assert plan.prediction.tpot_s * 1.1 <= 0.05


def test_llama_3_3_70b_is_tier_2_tensor_parallel_with_kv_aware_routing() -> None:
    plan = _plan("llama-3.3-70b", Traffic(requests_per_s=4.0))
    engine = plan.roles[0].engine
    assert plan.tier == 2
    assert 2 <= engine.tensor_parallel_size <= 8
    assert engine.nodes_per_replica == 1
    assert plan.routing.strategy == "kv-aware"
    assert plan.nodes.provisioning == "auto-mode"
    assert plan.prediction.requests_per_s >= 4.0 * 1.2  # 20 % headroom over the target rate


@pytest.mark.parametrize("model_id", ["glm-5", "kimi-k2.5"])
def test_700b_plus_moe_is_tier_3_multi_node(model_id: str) -> None:
    plan = _plan(model_id, Traffic(requests_per_s=2.0))
    assert plan.tier == 3
    assert plan.nodes.total_nodes >= 2
    assert plan.nodes.provisioning == "karpenter"
    assert plan.instance.efa_gbps > 0
    for role in plan.roles:
        assert role.engine.expert_parallel
        assert "--enable-expert-parallel" in role.engine.vllm_args
    if plan.mode == "disaggregated":
        assert [r.name for r in plan.roles] == ["prefill", "decode"]
        assert "--kv-transfer-config" in plan.roles[0].engine.vllm_args


def test_two_p5_on_demand_cost_141580_a_month_in_2025_and_less_today() -> None:
    # Kimi K2.5 (594 GB INT4/BF16) does not fit one p5.48xlarge (8 x 79 GiB): two nodes, PP 2
    then = _plan("kimi-k2.5", Traffic(requests_per_s=0.5), instance_families=("p5",), prices="reference")
    assert then.instance.type == "p5.48xlarge"
    assert then.nodes.total_nodes == 2
    assert then.cost.monthly_usd == pytest.approx(2 * 98.32 * 720)  # $141,580.80
    assert int(then.cost.monthly_usd) == 141_580
    assert then.instance.price_date == "2025-05-31"
    today = _plan("kimi-k2.5", Traffic(requests_per_s=0.5), instance_families=("p5",))
    assert (today.instance.price_book, today.instance.price_date) == ("aws-2026-08", "2026-08-21")
    assert today.cost.monthly_usd == pytest.approx(2 * 55.04 * 720)
    [old] = today.cost.comparisons  # the 2025 price as a comparison, not as today's
    assert (old.book, old.as_of, old.monthly_usd) == ("reference", "2025-05-31", pytest.approx(141_580.8))


def test_plan_json_round_trips_with_version_and_tier() -> None:
    plan = _plan("llama-3.1-8b")
    doc = json.loads(plan.model_dump_json())
    assert doc["schema_version"] == PLAN_SCHEMA_VERSION
    assert doc["tier"] == 1
    assert doc["traffic"]["requests_per_s"] == 1.0  # the default target is written down
    assert Plan.model_validate(doc) == plan
    assert set(plan.why) >= {"tier", "instance", "parallelism", "replicas", "provisioning", "routing", "cost"}
    args = plan.roles[0].engine.vllm_args
    assert args[args.index("--max-model-len") + 1] == str(plan.roles[0].engine.max_model_len)
    assert "--enable-prefix-caching" in args
    assert plan.alternatives


def test_concurrency_target_sizes_replicas() -> None:
    plan = _plan("qwen3-32b", Traffic(concurrency=100))
    engine = plan.roles[0]
    assert engine.replicas * engine.engine.max_num_seqs >= 100


def test_budget_binds_and_nearest_plan_is_given() -> None:
    with pytest.raises(InfeasibleError) as info:
        _plan("llama-3.3-70b", Traffic(requests_per_s=2.0), monthly_budget_usd=1000.0)
    err = info.value
    assert err.binding == ["budget"]
    assert err.exit_code == 3
    assert isinstance(err.nearest, Plan)
    assert err.nearest.cost.monthly_usd > 1000
    assert "nearest feasible" in str(err)


def test_ttft_binds_with_long_prompts() -> None:
    slo = Slo.from_preset("conversational", ttft_s=0.1)
    with pytest.raises(InfeasibleError) as info:
        _plan("llama-3.3-70b", Traffic(input_tokens=32_000, output_tokens=200), slo)
    assert info.value.binding == ["ttft"]
    nearest = info.value.nearest
    assert isinstance(nearest, Plan)
    assert nearest.slo.ttft_s > 0.1  # relaxed to what the best shape reaches


def test_memory_and_context_bind() -> None:
    with pytest.raises(InfeasibleError) as info:
        _plan("glm-5", instance_families=("g5",))  # 1.5 TB of BF16 weights, A10G has no FP8
    assert info.value.binding == ["memory"]
    assert isinstance(info.value.nearest, Plan)
    with pytest.raises(InfeasibleError) as ctx:
        _plan("qwen3-32b", Traffic(input_tokens=50_000))
    assert ctx.value.binding == ["context"]


def test_provisioning_follows_mig_dra_and_spot() -> None:
    dra = _plan("llama-3.1-8b", needs_dra=True)
    assert dra.nodes.provisioning == "managed-node-group"
    assert dra.nodes.needs_dra
    mig = _plan("llama-3.1-8b", needs_mig=True)
    assert mig.nodes.provisioning == "karpenter"
    assert mig.nodes.mig_profile is not None
    assert mig.nodes.mig_profile.startswith("all-")


def test_spot_is_cheaper_than_on_demand_and_dated() -> None:
    on_demand = _plan("llama-3.3-70b", Traffic(requests_per_s=2.0))
    spot = _plan("llama-3.3-70b", Traffic(requests_per_s=2.0), capacity_type="spot")
    assert spot.cost.monthly_usd < on_demand.cost.monthly_usd
    assert spot.instance.spot_price_date == "2026-08-21"
    assert on_demand.instance.spot_price_date is None
    assert "reclaimable" in spot.why["instance"]


def test_region_changes_price_and_offer() -> None:
    home = _plan("llama-3.1-8b", instance_families=("g6e",))
    frankfurt = _plan("llama-3.1-8b", instance_families=("g6e",), region="eu-central-1")
    assert frankfurt.instance.region == "eu-central-1"
    assert frankfurt.cost.monthly_usd == pytest.approx(home.cost.monthly_usd * 1.2504, rel=1e-3)
    with pytest.raises(InfeasibleError):
        _plan("kimi-k2.5", instance_families=("p5",), region="eu-central-1")  # no p5 priced there
    with pytest.raises(UnknownNameError, match="--region"):
        _plan("llama-3.1-8b", region="atlantis-1")


def test_spot_discount_from_overrides_file(tmp_path: Path) -> None:
    book = tmp_path / "prices.yaml"
    book.write_text("spot_discount: {g6: 0.5, g6e: 0.5, g5: 0.5, p4d: 0.5, p4de: 0.5, p5: 0.5, p5en: 0.5}\n")
    on_demand = _plan("llama-3.1-8b")
    spot = _plan("llama-3.1-8b", capacity_type="spot", prices=book)
    assert spot.instance.capacity_type == "spot"
    assert spot.cost.monthly_usd == pytest.approx(on_demand.cost.monthly_usd / 2)


def test_on_prem_gpus_take_replicas_first() -> None:
    cloud = _plan("llama-3.3-70b", Traffic(requests_per_s=10.0))
    hybrid = _plan("llama-3.3-70b", Traffic(requests_per_s=10.0), on_prem=OnPremPool("H100", 8))
    assert hybrid.on_prem is not None
    assert hybrid.on_prem.replicas >= 1
    assert hybrid.cost.monthly_usd < cloud.cost.monthly_usd


def test_model_config_path_plans(tmp_path: Path) -> None:
    cfg = {
        "_name_or_path": "mistralai/Mixtral-8x7B-Instruct-v0.1", "architectures": ["MixtralForCausalLM"],
        "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
        "intermediate_size": 14336, "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 32000,
        "max_position_embeddings": 32768,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    plan = make_plan(PlanRequest(load_model_config(tmp_path)))
    assert plan.name == "mixtral-8x7b-instruct-v0-1"
    assert plan.model.is_moe
    assert plan.tier == 2  # 46.7B total: above tier 1's 40B


@pytest.mark.parametrize(
    ("model_id", "name"),
    [
        ("llama-3.1-8b", "llama-3-1-8b"),
        ("kimi-k2.5", "kimi-k2-5"),
        ("3b_Model", "m-3b-model"),
        ("x" * 80, "x" * 63),
    ],
)
def test_dns_names(model_id: str, name: str) -> None:
    assert dns_name(model_id) == name


def test_bad_requests_name_the_flag() -> None:
    with pytest.raises(UsageError, match="--concurrency"):
        _plan("llama-3.1-8b", Traffic(requests_per_s=1.0, concurrency=4))
    with pytest.raises(UsageError, match="--preset"):
        Slo.from_preset("chatty")
    with pytest.raises(UsageError, match="--capacity-type"):
        _plan("llama-3.1-8b", capacity_type="reserved")


def test_mig_packs_the_smallest_slice_that_fits() -> None:
    # 8B at 2 req/s: FP8 weights (W8A16 on A100) fit a 3g.20gb slice, two replicas share one GPU, one node
    plan = _plan("llama-3.1-8b", Traffic(requests_per_s=2.0), needs_mig=True)
    assert plan.nodes.mig_profile == "all-3g.20gb"
    assert plan.instance.type == "p4d.24xlarge"
    assert plan.nodes.total_nodes == 1
    assert plan.roles[0].replicas == 2
    assert "2 of 16 slices used, 14 free" in plan.why["parallelism"]
    assert "W8A16" in plan.why["precision"]
    whole = [a for a in plan.alternatives if a.instance_type == "p4d.24xlarge (7g.40gb)"]
    assert whole
    assert all(a.monthly_usd == plan.cost.monthly_usd for a in whole)  # same cost: packing wins the tie
