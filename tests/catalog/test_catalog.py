"""Catalog lookups and the config.json parser, checked against hand-computed shapes and model cards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eksinfer.catalog import (
    default_price_book,
    get_gpu,
    get_instance,
    get_model,
    list_gpus,
    list_instances,
    list_models,
    load_model_config,
    price_regions,
)
from eksinfer.errors import ConfigError, UnknownNameError

ISSUE_MODELS = [
    "llama-3.1-8b",
    "llama-3.3-70b",
    "qwen3-32b",
    "qwen3-235b-a22b",
    "deepseek-v3",
    "glm-5",
    "kimi-k2.5",
    "gpt-oss-120b",
    "gpt-oss-20b",
]


def test_catalog_has_the_issue_models_gpus_and_families() -> None:
    assert list_models() == ISSUE_MODELS
    gpus = {"A10G", "L4", "L40S", "A100-40GB", "A100-80GB", "H100", "H200", "B200", "B300"}
    assert set(list_gpus()) == gpus
    families = {i.family for i in list_instances()}
    assert families == {"g5", "g6", "g6e", "p4d", "p4de", "p5", "p5e", "p5en", "p6-b200", "p6-b300"}


@pytest.mark.parametrize(
    ("model_id", "total_b", "active_b"),
    [
        # From the config.json shapes; cards: 8.03B, 70.6B, 32.8B, 235B/22B, 671B/37B, 744B/40B.
        ("llama-3.1-8b", 8.03, 7.50),  # active excludes the 0.53B embedding gather
        ("llama-3.3-70b", 70.55, 69.50),
        ("qwen3-32b", 32.76, 31.98),
        ("qwen3-235b-a22b", 235.09, 21.57),
        ("deepseek-v3", 671.03, 36.62),
        ("glm-5", 743.91, 40.83),
        ("kimi-k2.5", 1026.41, 31.69),
    ],
)
def test_parameter_counts_match_model_cards(model_id: str, total_b: float, active_b: float) -> None:
    spec = get_model(model_id)
    assert spec.total_params / 1e9 == pytest.approx(total_b, abs=0.01)
    assert spec.active_params / 1e9 == pytest.approx(active_b, abs=0.01)


def test_architecture_fields() -> None:
    llama = get_model("LLAMA-3.1-8B")  # ids are case-insensitive
    assert (llama.num_layers, llama.num_kv_heads, llama.head_dim, llama.attention) == (32, 8, 128, "gqa")
    ds = get_model("deepseek-v3")
    assert (ds.attention, ds.kv_lora_rank, ds.qk_rope_head_dim, ds.native_precision) == (
        "mla",
        512,
        64,
        "fp8",
    )
    assert (ds.num_experts, ds.experts_per_token, ds.num_moe_layers, ds.num_shared_experts) == (256, 8, 58, 1)
    kimi = get_model("kimi-k2.5")
    assert (kimi.native_precision, kimi.quant_scope, kimi.int4_group_size) == ("int4", "routed-experts", 32)
    assert kimi.max_context == 262144
    assert kimi.num_experts == 384
    assert get_model("glm-5").index_head_dim == 128
    assert get_model("qwen3-32b").hf_id_for("fp8") == "Qwen/Qwen3-32B-FP8"


def test_unknown_model_lists_close_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        get_model("llama-3.1-7b")
    assert "llama-3.1-8b" in str(info.value)
    assert info.value.exit_code == 2


def test_gpu_lookup_is_case_insensitive() -> None:
    h100 = get_gpu("h100")
    assert (h100.name, h100.hbm_bandwidth_gbps, h100.bf16_tflops, h100.fp8_tflops) == (
        "H100",
        3350,
        989,
        1979,
    )
    assert h100.mig
    assert not get_gpu("L40S").mig
    assert get_gpu("a100").name == "A100-80GB"
    assert get_gpu("A100").tflops_for("fp8") == 312  # no FP8 tensor cores: W8A16 runs at the BF16 rate
    with pytest.raises(UnknownNameError):
        get_gpu("H300")


def test_reference_prices_and_two_p5_per_month() -> None:
    p5 = get_instance("p5.48xlarge", prices="reference")
    assert (p5.gpu, p5.gpus, p5.price_per_hour_usd, p5.price_date) == ("H100", 8, 98.32, "2025-05-31")
    assert get_instance("p4d.24xlarge", prices="reference").price_per_hour_usd == 32.77
    assert int(2 * p5.price("on-demand") * 720) == 141_580  # the design's example: $141,580 a month in 2025
    assert get_instance("p5.48xlarge", prices="aws-2026-08").price_per_hour_usd == 55.04
    assert get_instance("p5e.48xlarge").price_per_hour_usd is None  # Capacity Blocks only
    # p5en's only recorded price is post-cut: the 2025 book does not pair it with pre-cut p5 prices
    assert get_instance("p5en.48xlarge", prices="reference").price_per_hour_usd is None


def test_default_book_is_the_newest_and_spot_is_cheaper() -> None:
    assert default_price_book() == "aws-2026-08"
    p5 = get_instance("p5.48xlarge")
    assert (p5.price_per_hour_usd, p5.price_date, p5.price_book) == (55.04, "2026-08-21", "aws-2026-08")
    for inst in list_instances():
        if inst.price_per_hour_usd is not None:
            assert inst.spot_discount > 0, inst.type
            assert inst.price("spot") < inst.price("on-demand")  # type: ignore[operator]
            assert inst.spot_date == "2026-08-21"
    assert get_instance("p5.48xlarge", prices="reference").price("spot") == 98.32  # none known for 2025


def test_region_factors_price_and_hide_families() -> None:
    assert get_instance("p5.48xlarge", region="us-west-2").price_per_hour_usd == 55.04
    assert get_instance("p5.48xlarge", region="us-west-1").price_per_hour_usd == pytest.approx(68.8)
    frankfurt = get_instance("p4d.24xlarge", region="eu-central-1")
    assert frankfurt.price_per_hour_usd == pytest.approx(27.4330, 1e-4)
    assert get_instance("p5.48xlarge", region="eu-central-1").price_per_hour_usd is None  # not offered
    assert "ap-northeast-1" in price_regions()
    with pytest.raises(UnknownNameError, match="--region"):
        list_instances(region="mars-north-1")
    with pytest.raises(UnknownNameError):
        get_instance("p5.48xlarge", prices="reference", region="us-west-2")  # the 2025 book has no factors


def test_p6_b300_is_priced_only_where_the_snapshot_has_a_row(tmp_path: Path) -> None:
    """vms.csv @00148f2a has one p6-b300.48xlarge row, us-west-2: no us-east-1 price is made up from it."""
    b300 = get_instance("p6-b300.48xlarge")
    assert (b300.gpu, b300.gpus, b300.vcpus, b300.memory_gib, b300.efa_gbps) == ("B300", 8, 192, 4096, 6400)
    assert get_gpu(b300.gpu).memory_gib * b300.gpus == pytest.approx(2148.8)  # AWS: 2148 GiB (8 x 268)
    assert b300.price("on-demand") is None  # unpriced at home, as p5e
    assert b300.price("spot") is None
    oregon = get_instance("p6-b300.48xlarge", region="us-west-2")
    assert (oregon.price("on-demand"), oregon.price_date) == (142.416, "2026-08-21")
    assert oregon.region == "us-west-2"
    assert oregon.price("spot") == pytest.approx(142.416 * 0.23)  # SpotPrice 33.4308 rounds to 0.77 off
    assert get_instance("p6-b300.48xlarge", region="us-east-2").price("on-demand") is None  # no row there
    # a regional row never leaks into the factor path of other types
    assert get_instance("p6-b200.48xlarge", region="us-west-2").price("on-demand") == 113.9328
    book = tmp_path / "prices.yaml"
    book.write_text("regional_on_demand: {eu-central-1: {p6-b300.48xlarge: 170.0}}\n")
    assert "eu-central-1" in price_regions(book)
    assert get_instance("p6-b300.48xlarge", prices=book, region="eu-central-1").price("on-demand") == 170.0
    assert get_instance("p6-b300.48xlarge", prices=book, region="us-west-2").price("on-demand") == 142.416
    bad = tmp_path / "bad.yaml"
    bad.write_text("regional_on_demand: {us-west-2: 5}\n")
    with pytest.raises(ConfigError, match="regional_on_demand"):
        get_instance("p6-b300.48xlarge", prices=bad, region="us-west-2")
    bad.write_text("regional_on_demand: {us-west-2: {p6-b300.48xlarge: -1}}\n")
    with pytest.raises(ConfigError, match="p6-b300"):
        get_instance("p6-b300.48xlarge", prices=bad, region="us-west-2")


def test_price_overrides_file_with_spot_discount(tmp_path: Path) -> None:
    book = tmp_path / "prices.yaml"
    book.write_text("as_of: '2026-11-01'\non_demand: {p5e.48xlarge: 40.0}\nspot_discount: {p5: 0.6}\n")
    p5 = get_instance("p5.48xlarge", prices=book)
    assert p5.price("spot") == pytest.approx(55.04 * 0.4)  # on top of the newest book
    assert p5.price_date == "2026-11-01"
    assert get_instance("p5e.48xlarge", prices=book).price("on-demand") == 40.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("spot_discount: {p5: 1.5}\n")
    with pytest.raises(ConfigError):
        get_instance("p5.48xlarge", prices=bad)


def _write(tmp_path: Path, cfg: dict[str, object]) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


def test_load_mixtral_config(tmp_path: Path) -> None:
    cfg = {
        "_name_or_path": "mistralai/Mixtral-8x7B-v0.1",
        "architectures": ["MixtralForCausalLM"],
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "vocab_size": 32000,
        "max_position_embeddings": 32768,
    }
    spec = load_model_config(_write(tmp_path, cfg))
    assert spec.id == "mixtral-8x7b-v0.1"
    assert spec.is_moe
    assert spec.num_moe_layers == 32
    assert spec.total_params / 1e9 == pytest.approx(46.70, abs=0.01)  # card: 46.7B total
    # card: 12.9B active, which counts the 0.13B embedding gather we leave out: 32 x 394.3M + lm_head 0.13B
    assert spec.active_params / 1e9 == pytest.approx(12.75, abs=0.01)


def test_load_awq_and_rejects_garbage(tmp_path: Path) -> None:
    cfg = {
        "model_type": "llama",
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "vocab_size": 100,
        "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128},
    }
    spec = load_model_config(_write(tmp_path, cfg) / "config.json")
    assert (spec.native_precision, spec.num_kv_heads, spec.head_dim) == ("int4", 4, 16)
    # null reads as absent (multi-head attention), as transformers' LlamaConfig does; a string does not
    assert load_model_config(_write(tmp_path, {**cfg, "num_key_value_heads": None})).num_kv_heads == 4
    with pytest.raises(ConfigError, match="expected a number"):
        load_model_config(_write(tmp_path, {**cfg, "num_key_value_heads": "4"}))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError):
        load_model_config(tmp_path)
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        load_model_config(_write(tmp_path, {"hidden_size": 8}))
    with pytest.raises(ConfigError):
        load_model_config(tmp_path / "missing.json")


GEMMA2_9B = {  # google/gemma-2-9b config.json (tie_word_embeddings omitted: Gemma2Config ties by default)
    "architectures": ["Gemma2ForCausalLM"],
    "model_type": "gemma2",
    "num_hidden_layers": 42,
    "hidden_size": 3584,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 256,
    "intermediate_size": 14336,
    "vocab_size": 256000,
    "max_position_embeddings": 8192,
}


def test_family_default_ties_gemma2_embeddings(tmp_path: Path) -> None:
    # 42 x (3 x 14.68M attention + 154.1M MLP) + one 256,000 x 3,584 embedding = 9.24B (card: 9.24B); read
    # as untied it would be 10.16B, 10 % high
    spec = load_model_config(_write(tmp_path, GEMMA2_9B))
    assert spec.tie_word_embeddings
    assert spec.total_params / 1e9 == pytest.approx(9.24, abs=0.01)
    untied = load_model_config(_write(tmp_path, {**GEMMA2_9B, "tie_word_embeddings": False}))
    assert untied.total_params / 1e9 == pytest.approx(10.16, abs=0.01)
    # the family is also read from the architecture when model_type is absent
    arch_only = {k: v for k, v in GEMMA2_9B.items() if k != "model_type"}
    assert load_model_config(_write(tmp_path, arch_only)).tie_word_embeddings


def test_unknown_family_is_refused_unless_it_says_how_it_ties(tmp_path: Path) -> None:
    cfg = {**GEMMA2_9B, "model_type": "brandnew", "architectures": ["BrandNewForCausalLM"]}
    with pytest.raises(ConfigError) as err:
        load_model_config(_write(tmp_path, cfg))
    assert err.value.field == "model_type"
    assert "brandnew" in str(err.value)
    assert load_model_config(_write(tmp_path, {**cfg, "tie_word_embeddings": True})).tie_word_embeddings


def test_hf_id_and_served_name_override_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cfg"
    folder.mkdir()
    cfg = {k: v for k, v in GEMMA2_9B.items()}
    (folder / "config.json").write_text(json.dumps(cfg))
    assert (load_model_config(folder).hf_id, load_model_config(folder).id) == ("cfg", "cfg")
    spec = load_model_config(folder, hf_id="google/gemma-2-9b-it")
    assert (spec.hf_id, spec.id) == ("google/gemma-2-9b-it", "gemma-2-9b-it")
    spec = load_model_config(folder, hf_id="google/gemma-2-9b-it", served_name="gemma")
    assert (spec.hf_id, spec.id) == ("google/gemma-2-9b-it", "gemma")
