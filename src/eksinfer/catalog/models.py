"""Model specs parsed from Hugging Face `config.json` fields (Llama, Qwen, Mixtral, DeepSeek/Kimi, GLM-5,
gpt-oss).

The catalog stores each model's config.json fields verbatim and runs them through the same parser as
`--model-config PATH`, so a catalog entry and a local config give the same spec. Parameter counts are
computed from the shapes (SwiGLU MLPs, MLA projections per DeepSeek-V2/V3); the model card's headline counts
are kept beside them for display.

Hybrid attention (gpt-oss): `layer_types` names each layer "sliding_attention" or "full_attention" and
`sliding_window` the window in tokens (transformers' GptOssConfig); a config without `layer_types` is read as
full attention everywhere, which can only overstate its KV cache. gpt-oss's attention sinks (one learned
logit per query head, vLLM `GptOssAttention.sinks`) hold no KV and add one logit per query and head.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from eksinfer import untrusted
from eksinfer.errors import ConfigError

AttentionKind = Literal["gqa", "mla"]
# fp4 is NVIDIA's NVFP4 (E2M1, an E4M3 scale per 16 weights); mxfp4 is the OCP microscaling format gpt-oss
# ships its routed experts in (E2M1, an E8M0 scale per 32 weights): different bytes and different kernels
Precision = Literal["bf16", "fp8", "int4", "fp4", "mxfp4"]
QuantScope = Literal["all-linear", "routed-experts"]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Architecture of one decoder-only LLM, enough to size weights, KV cache and FLOPs."""

    id: str
    hf_id: str
    architecture: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int  # GQA head dim; for MLA the q/k head dim (nope + rope)
    intermediate_size: int  # dense MLP width (0 when every layer is MoE)
    vocab_size: int
    max_context: int
    tie_word_embeddings: bool
    attention: AttentionKind
    native_precision: Precision
    quant_scope: QuantScope  # which weights the native precision applies to
    int4_group_size: int
    # MLA ranks (0 for GQA)
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    index_head_dim: int = 0  # DeepSeek-sparse-attention indexer key (GLM-5), cached per token and layer
    # Sliding-window attention (0 when every layer attends to the whole context)
    sliding_window: int = 0  # tokens a sliding layer attends to (the query's own included)
    num_sliding_layers: int = 0  # layers with sliding-window attention; the rest attend to everything
    first_layer_sliding: bool = False  # layer 0 slides (gpt-oss): vLLM then numbers its KV-cache groups first
    attention_sinks: bool = False  # a learned per-head logit in the softmax (gpt-oss): no KV
    # MoE (0 for dense)
    num_experts: int = 0
    num_shared_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    num_moe_layers: int = 0
    # computed parameter counts
    attention_params_per_layer: int = 0
    dense_mlp_params_per_layer: int = 0
    expert_params: int = 0  # one routed expert
    shared_expert_params: int = 0  # all shared experts of one MoE layer
    embedding_params: int = 0  # input embedding + lm_head (once when tied)
    total_params: int = 0
    active_params: int = 0
    published_total_params_b: float = 0.0
    published_active_params_b: float = 0.0
    hf_variants: tuple[tuple[str, str], ...] = ()
    source: str = ""
    as_of: str = ""

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def num_full_attention_layers(self) -> int:
        return self.num_layers - self.num_sliding_layers

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    @property
    def total_params_b(self) -> float:
        return self.published_total_params_b or self.total_params / 1e9

    @property
    def active_params_b(self) -> float:
        return self.published_active_params_b or self.active_params / 1e9

    @property
    def routed_expert_params(self) -> int:
        return self.num_moe_layers * self.num_experts * self.expert_params

    def hf_id_for(self, precision: str) -> str:
        """The checkpoint to serve at `precision` (a published quantized variant when there is one)."""
        return dict(self.hf_variants).get(precision, self.hf_id)


def _int(cfg: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise ConfigError(f"config.json lacks {key!r}", field=key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"expected a number, got {value!r}", field=key)
    return int(value)


def _opt(cfg: Mapping[str, Any], key: str, default: int) -> int:
    """An optional count: absent, null or 0 means `default`; a wrong type is a ConfigError naming the key."""
    return _int(cfg, key) if cfg.get(key) else default


def _native_precision(cfg: Mapping[str, Any]) -> tuple[Precision, QuantScope, int]:
    """Weight precision from `quantization_config` (fp8, compressed-tensors, awq, gptq) else bf16."""
    quant = cfg.get("quantization_config")
    if not isinstance(quant, Mapping):
        return "bf16", "all-linear", 128
    method = str(quant.get("quant_method", "")).lower()
    scope: QuantScope = "routed-experts" if quant.get("scope") == "routed-experts" else "all-linear"
    if method == "mxfp4":
        # gpt-oss: only the routed experts are MXFP4 (`modules_to_not_convert` lists attention, router,
        # embeddings and lm_head), and vLLM's Mxfp4Config quantizes only FusedMoE layers, running every linear
        # layer unquantized (vllm/model_executor/layers/quantization/mxfp4.py get_quant_method)
        return "mxfp4", "routed-experts", 32
    bits = quant.get("bits") or quant.get("w_bit")
    group = _opt(quant, "group_size", 0) or _opt(quant, "q_group_size", 0) or 128
    for group_cfg in (quant.get("config_groups") or {}).values():
        weights = group_cfg.get("weights", {}) if isinstance(group_cfg, Mapping) else {}
        bits = weights.get("num_bits", bits)
        group = _opt(weights, "group_size", group)
        if weights.get("type") == "float" and bits == 8:
            return "fp8", scope, group
    if method in ("fp8", "fbgemm_fp8", "modelopt") or (bits == 8 and method == "compressed-tensors"):
        return "fp8", scope, group
    if bits == 4 or method in ("awq", "gptq", "awq_marlin", "gptq_marlin"):
        return "int4", scope, group
    raise ConfigError(f"unsupported quantization {method!r} ({bits} bits)", field="quantization_config")


def _moe_fields(cfg: Mapping[str, Any], layers: int) -> tuple[int, int, int, int, int, int]:
    """(experts, shared experts, top-k, expert width, shared width, MoE layers) across the families."""
    experts = (
        _opt(cfg, "n_routed_experts", 0) or _opt(cfg, "num_experts", 0) or _opt(cfg, "num_local_experts", 0)
    )
    if experts == 0:
        return 0, 0, 0, 0, 0, 0
    top_key = "num_experts_per_tok" if "num_experts_per_tok" in cfg else "experts_per_token"  # gpt-oss: both
    top_k = _int(cfg, top_key)
    if "n_routed_experts" in cfg:  # DeepSeek V2/V3, Kimi K2, GLM-5
        width = _int(cfg, "moe_intermediate_size")
        shared = _opt(cfg, "n_shared_experts", 0)
        first_dense = _opt(cfg, "first_k_dense_replace", 0)
        freq = _opt(cfg, "moe_layer_freq", 1)
        moe_layers = sum(1 for i in range(first_dense, layers) if i % freq == 0)
        return experts, shared, top_k, width, shared * width, moe_layers
    if "num_local_experts" in cfg:  # Mixtral, gpt-oss: intermediate_size is the expert width
        return experts, 0, top_k, _int(cfg, "intermediate_size"), 0, layers
    width = _int(cfg, "moe_intermediate_size")  # Qwen2/Qwen3 MoE
    shared_width = _opt(cfg, "shared_expert_intermediate_size", 0)
    step = _opt(cfg, "decoder_sparse_step", 1)
    dense_only = set(cfg.get("mlp_only_layers") or [])
    moe_layers = sum(1 for i in range(layers) if i not in dense_only and (i + 1) % step == 0)
    return experts, 1 if shared_width else 0, top_k, width, shared_width, moe_layers


def _sliding_layers(cfg: Mapping[str, Any], layers: int) -> tuple[int, int]:
    """(sliding window in tokens, sliding layers) from `layer_types` + `sliding_window`; (0, 0) without them.

    Only `layer_types` says which layers slide (gpt-oss alternates sliding and full, transformers'
    GptOssConfig default); a bare `sliding_window` (Qwen2/3 with use_sliding_window false, Gemma 2's implicit
    alternation) is not read as sliding, so such a model is counted with full attention everywhere: its KV
    and attention cost can be overstated, never understated.
    """
    kinds = cfg.get("layer_types")
    if kinds is None:
        return 0, 0
    if not isinstance(kinds, list) or len(kinds) != layers:
        raise ConfigError(f"expected a list of {layers} layer types, got {kinds!r}", field="layer_types")
    sliding = sum(1 for kind in kinds if kind == "sliding_attention")
    unknown = {str(kind) for kind in kinds} - {"sliding_attention", "full_attention"}
    if unknown:
        raise ConfigError(f"unsupported layer types {sorted(unknown)}", field="layer_types")
    if not sliding:
        return 0, 0
    window = _int(cfg, "sliding_window")
    if window < 1:
        raise ConfigError(f"must be at least 1, got {window}", field="sliding_window")
    return window, sliding


def _attention_params(cfg: Mapping[str, Any], hidden: int, heads: int, kv_heads: int, head_dim: int) -> int:
    """Projection weights of one attention layer (GQA, or MLA with its LoRA-compressed q and kv)."""
    if "kv_lora_rank" in cfg and cfg.get("kv_lora_rank"):
        q_lora = _opt(cfg, "q_lora_rank", 0)
        kv_lora = _int(cfg, "kv_lora_rank")
        nope, rope, v_dim = (
            _int(cfg, "qk_nope_head_dim"),
            _int(cfg, "qk_rope_head_dim"),
            _int(cfg, "v_head_dim"),
        )
        qk = nope + rope
        q = hidden * q_lora + q_lora * heads * qk if q_lora else hidden * heads * qk
        kv = hidden * (kv_lora + rope) + kv_lora * heads * (nope + v_dim)
        indexer = 0
        if cfg.get("index_head_dim"):  # DSA lightning indexer (GLM-5 / DeepSeek-V3.2): wq_b, wk, weights_proj
            idx_heads, idx_dim = _int(cfg, "index_n_heads", 64), _int(cfg, "index_head_dim")
            indexer = (q_lora or hidden) * idx_heads * idx_dim + hidden * idx_dim + hidden * idx_heads
        return q + kv + heads * v_dim * hidden + indexer
    return hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden


def _has_attention_sinks(cfg: Mapping[str, Any]) -> bool:
    """gpt-oss declares no key for its sinks: every GptOssForCausalLM attention layer has them (vLLM
    vllm/model_executor/models/gpt_oss.py `OAIAttention.sinks`, one per query head)."""
    return config_family(cfg) == "gpt_oss" or "GptOssForCausalLM" in (cfg.get("architectures") or [])


# Config families the parser counts correctly, with their config class's `tie_word_embeddings` default
# (transformers `configuration_<family>.py`): a config.json usually omits the key when it equals the default,
# so the family decides whether the embedding and the LM head are one matrix or two. Gemma 2 omitted and read
# as untied counts 256,000 x 3,584 = 0.92 B extra on 9.2 B (10 % high).
TIED_BY_DEFAULT = {
    "llama": False,
    "mistral": False,
    "mixtral": False,
    "qwen2": False,
    "qwen2_moe": False,
    "qwen3": False,
    "qwen3_moe": False,
    "phi3": False,
    "deepseek_v2": False,
    "deepseek_v3": False,
    "kimi_k2": False,
    "kimi_k25": False,
    "glm_moe_dsa": False,
    "gpt_oss": False,
    "gemma": True,
    "gemma2": True,
    "gemma3_text": True,
    "gemma3": True,
}


def config_family(cfg: Mapping[str, Any]) -> str:
    """`model_type`, else the architecture class name less its task suffix (MixtralForCausalLM -> mixtral)."""
    if cfg.get("model_type"):
        return str(cfg["model_type"]).lower()
    arch = str((cfg.get("architectures") or [""])[0])
    for suffix in ("ForCausalLM", "ForConditionalGeneration"):
        arch = arch.removesuffix(suffix)
    return arch.lower()


def _tied(cfg: Mapping[str, Any], family: str) -> bool:
    if "tie_word_embeddings" in cfg:
        return bool(cfg["tie_word_embeddings"])
    known = {k.replace("_", ""): v for k, v in TIED_BY_DEFAULT.items()}
    default = known.get(family.replace("_", ""))
    if default is None:
        raise ConfigError(
            f"unknown config family {family or '(none)'!r}: its tie_word_embeddings default decides whether "
            'the LM head is counted; set "tie_word_embeddings" in the config, or use one of '
            + ", ".join(sorted(TIED_BY_DEFAULT)),
            field="model_type",
        )
    return default


def parse_hf_config(cfg: Mapping[str, Any], *, model_id: str, hf_id: str = "", **meta: Any) -> ModelSpec:
    """Build a ModelSpec from config.json fields; multimodal wrappers use their `text_config`."""
    family = config_family(cfg)  # the wrapper's (gemma3), before text_config's own (gemma3_text)
    if isinstance(cfg.get("text_config"), Mapping):
        cfg = {**cfg, **cfg["text_config"]}
    layers, hidden = _int(cfg, "num_hidden_layers"), _int(cfg, "hidden_size")
    heads = _int(cfg, "num_attention_heads")
    # Absent or null means multi-head attention, as the Hugging Face config classes read it.
    kv_heads = heads if cfg.get("num_key_value_heads") is None else _int(cfg, "num_key_value_heads")
    for key, count in (
        ("num_hidden_layers", layers),
        ("hidden_size", hidden),
        ("num_attention_heads", heads),
    ):
        if count < 1:
            raise ConfigError(f"must be at least 1, got {count}", field=key)
    mla = bool(cfg.get("kv_lora_rank"))
    rope = _opt(cfg, "qk_rope_head_dim", 0)
    head_dim = _opt(cfg, "qk_nope_head_dim", 0) + rope if mla else _int(cfg, "head_dim", hidden // heads)
    experts, shared, top_k, width, shared_width, moe_layers = _moe_fields(cfg, layers)
    dense_width = _opt(cfg, "intermediate_size", 0) if moe_layers < layers else 0
    vocab, tied = _int(cfg, "vocab_size"), _tied(cfg, family)
    window, sliding = _sliding_layers(cfg, layers)
    sinks = _has_attention_sinks(cfg)
    attn = _attention_params(cfg, hidden, heads, kv_heads, head_dim) + (heads if sinks else 0)
    dense_mlp = 3 * hidden * dense_width  # SwiGLU: gate, up, down
    expert, shared_p = 3 * hidden * width, 3 * hidden * shared_width
    router = hidden * experts
    embed = vocab * hidden * (1 if tied else 2)
    moe_total = moe_layers * (experts * expert + shared_p + router)
    moe_active = moe_layers * (top_k * expert + shared_p + router)
    body = layers * attn + (layers - moe_layers) * dense_mlp
    precision, scope, group = _native_precision(cfg)
    variants = meta.pop("hf_variants", {}) or {}
    return ModelSpec(
        id=model_id,
        hf_id=hf_id or model_id,
        architecture=str((cfg.get("architectures") or [cfg.get("model_type", "unknown")])[0]),
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=dense_width,
        vocab_size=vocab,
        max_context=_int(cfg, "max_position_embeddings", 4096),
        tie_word_embeddings=tied,
        attention="mla" if mla else "gqa",
        native_precision=precision,
        quant_scope=scope,
        int4_group_size=group,
        q_lora_rank=_opt(cfg, "q_lora_rank", 0),
        kv_lora_rank=_opt(cfg, "kv_lora_rank", 0),
        qk_rope_head_dim=rope,
        v_head_dim=_opt(cfg, "v_head_dim", 0),
        index_head_dim=_opt(cfg, "index_head_dim", 0),
        sliding_window=window,
        num_sliding_layers=sliding,
        first_layer_sliding=bool(sliding) and cfg["layer_types"][0] == "sliding_attention",
        attention_sinks=sinks,
        num_experts=experts,
        num_shared_experts=shared,
        experts_per_token=top_k,
        moe_intermediate_size=width,
        shared_expert_intermediate_size=shared_width,
        num_moe_layers=moe_layers,
        attention_params_per_layer=attn,
        dense_mlp_params_per_layer=dense_mlp,
        expert_params=expert,
        shared_expert_params=shared_p,
        embedding_params=embed,
        total_params=body + moe_total + embed,
        active_params=body + moe_active + vocab * hidden,  # the lm_head GEMM; the embedding is a gather
        hf_variants=tuple(sorted(variants.items())),
        **meta,
    )


def load_model_config(path: Path, *, hf_id: str | None = None, served_name: str | None = None) -> ModelSpec:
    """Read a local Hugging Face config.json (or a directory holding one) into a ModelSpec. `hf_id` is the
    checkpoint vLLM serves (default: the config's `_name_or_path`, else the folder name) and `served_name`
    the model name clients send (default: the last part of the id, lower case)."""
    file = path / "config.json" if path.is_dir() else path
    text = untrusted.read_text(file, field="--model-config")
    try:
        cfg = untrusted.load_json(text, where=str(file), field="--model-config")
    except json.JSONDecodeError as err:
        raise ConfigError(f"cannot read {str(file)!r}: {err}", field="--model-config") from err
    if not isinstance(cfg, dict):
        raise ConfigError(f"{str(file)!r} is not a JSON object", field="--model-config")
    name = hf_id or str(cfg.get("_name_or_path") or file.resolve().parent.name)
    model_id = served_name or name.rstrip("/").split("/")[-1].lower()
    return parse_hf_config(cfg, model_id=model_id, hf_id=name, source=str(file))
