"""gpt-oss's config.json: a local copy of the public openai/gpt-oss-120b config (tests/catalog/data, source in
its README) parses to the catalog entry, with its sliding-window layers, sinks and MXFP4 experts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eksinfer.catalog import get_model
from eksinfer.catalog.models import load_model_config, parse_hf_config
from eksinfer.errors import ConfigError

CONFIG = Path(__file__).parent / "data" / "gpt-oss-120b.config.json"


def test_the_public_config_parses_to_the_catalog_spec() -> None:
    local = load_model_config(CONFIG, hf_id="openai/gpt-oss-120b")
    catalog = get_model("gpt-oss-120b")
    assert local.id == "gpt-oss-120b"
    assert (local.num_layers, local.hidden_size, local.num_attention_heads) == (36, 2880, 64)
    assert (local.num_kv_heads, local.head_dim, local.vocab_size, local.max_context) == (
        8,
        64,
        201088,
        131072,
    )
    assert (local.num_experts, local.experts_per_token, local.moe_intermediate_size) == (128, 4, 2880)
    assert local.num_moe_layers == 36
    assert local.intermediate_size == 0
    assert (local.sliding_window, local.num_sliding_layers, local.num_full_attention_layers) == (128, 18, 18)
    assert local.attention_sinks
    assert (local.native_precision, local.quant_scope) == ("mxfp4", "routed-experts")
    assert not local.tie_word_embeddings
    assert local.total_params == catalog.total_params
    assert local.active_params == catalog.active_params


def test_parameter_counts_match_the_card() -> None:
    # experts: 36 layers x 128 x 3 x 2880 x 2880 = 114.66 B; attention 36 x (2880 x (4096 + 2 x 512) + 4096 x
    # 2880 + 64 sinks) = 0.955 B; router 36 x 2880 x 128; embeddings + lm_head 2 x 201088 x 2880 = 1.158 B.
    # Card / paper (arXiv 2508.10925): 116.83 B total, 5.13 B active (biases and norms make the 0.04 B rest)
    spec = get_model("gpt-oss-120b")
    assert spec.routed_expert_params == 36 * 128 * 3 * 2880 * 2880
    assert spec.attention_params_per_layer == 2880 * (4096 + 1024) + 4096 * 2880 + 64
    assert spec.total_params / 1e9 == pytest.approx(116.83, abs=0.1)
    assert spec.active_params / 1e9 == pytest.approx(5.13, abs=0.05)
    small = get_model("gpt-oss-20b")
    assert (small.num_layers, small.num_experts, small.num_sliding_layers) == (24, 32, 12)
    assert small.total_params / 1e9 == pytest.approx(20.91, abs=0.05)


def _cfg() -> dict[str, object]:
    cfg: dict[str, object] = json.loads(CONFIG.read_text(encoding="utf-8"))
    return cfg


def test_without_layer_types_every_layer_is_full_attention() -> None:
    cfg = _cfg()
    del cfg["layer_types"]
    spec = parse_hf_config(cfg, model_id="x")
    assert (spec.sliding_window, spec.num_sliding_layers) == (0, 0)  # never understates the KV cache


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"layer_types": ["sliding_attention"] * 35}, "layer_types"),  # one short of 36
        ({"layer_types": ["chunked_attention"] * 36}, "layer_types"),
        ({"sliding_window": None}, "sliding_window"),
        ({"sliding_window": 0}, "sliding_window"),
    ],
)
def test_bad_hybrid_fields_name_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_hf_config({**_cfg(), **change}, model_id="x")
    assert err.value.field == field
