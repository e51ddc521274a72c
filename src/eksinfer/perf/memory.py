"""Memory model: weight bytes by precision, KV bytes per token, and the KV budget vLLM is left with.

KV per token (checked against vLLM: Llama-3.1-8B 131,072 B, Llama-3.1-70B 327,680 B):
    GQA:  2 x layers x kv_heads x head_dim x dtype bytes        (per GPU: ceil(kv_heads / TP), replicated
                                                                  when TP > kv_heads)
    MLA:  layers x (kv_lora_rank + qk_rope_head_dim) x dtype bytes   (latent not sharded by TP)
          + layers x (index_head_dim + 4) bytes for a DeepSeek-sparse-attention indexer key (FP8 + scale)
Per-GPU budget (llm-d-planner capacity_planner.py, fitted on H100 + vLLM):
    kv = util x memory - weights / (TP x PP) - activation - non_torch
    activation = 5.2 GiB dense / 7.6 GiB MoE at 8,192 batched tokens (measured 4.8-5.6 dense, 7.4-8 MoE,
                 CUDA graphs included), scaled with max_num_batched_tokens; non_torch 0.15 GiB at one GPU,
                 0.6 GiB with TP/PP > 1 (NCCL buffers).
"""

from __future__ import annotations

import math

from eksinfer.catalog.models import ModelSpec

GIB = 2**30
ACTIVATION_DENSE_GIB = 5.2
ACTIVATION_MOE_GIB = 7.6
ACTIVATION_REF_TOKENS = 8192
NON_TORCH_SINGLE_GIB = 0.15
NON_TORCH_MULTI_GIB = 0.6
BF16_BYTES = 2.0


def bytes_per_param(precision: str, int4_group_size: int = 128) -> float:
    """Bytes a linear-layer weight takes: BF16 2, FP8 1 (block scales negligible), INT4 0.5 + a BF16 scale
    per group (group 128: 0.516; group 32 as Kimi K2.5 ships: 0.5625), NVFP4 0.5 + an FP8 E4M3 scale per
    16 weights = 0.5625 (NVIDIA ModelOpt's format; MXFP4's E8M0 scale per 32 would be 0.53)."""
    if precision == "bf16":
        return 2.0
    if precision == "fp8":
        return 1.0
    if precision == "fp4":
        return 0.5 + 1.0 / 16
    if precision == "int4":
        return 0.5 + 2.0 / int4_group_size
    raise ValueError(f"unknown precision {precision!r}")


def kv_dtype_bytes(kv_cache_dtype: str) -> float:
    """--kv-cache-dtype auto keeps the activation dtype (BF16, also for FP8 weights); fp8 halves it."""
    return 1.0 if kv_cache_dtype.startswith("fp8") else 2.0


def non_expert_linear_params(model: ModelSpec) -> int:
    """Attention, dense MLPs, shared experts and routers: read on every step whatever the batch."""
    router = model.hidden_size * model.num_experts
    return (
        model.num_layers * model.attention_params_per_layer
        + model.num_dense_layers * model.dense_mlp_params_per_layer
        + model.num_moe_layers * (model.shared_expert_params + router)
    )


def linear_bytes(model: ModelSpec, precision: str) -> tuple[float, float]:
    """(bytes per non-expert linear param, bytes per routed-expert param) at `precision`.

    A checkpoint whose native quantization covers only routed experts (Kimi K2.5 INT4) keeps BF16 elsewhere.
    """
    bpp = bytes_per_param(precision, model.int4_group_size)
    if precision == model.native_precision and model.quant_scope == "routed-experts":
        return BF16_BYTES, bpp
    return bpp, bpp


def weight_bytes(model: ModelSpec, precision: str) -> float:
    """All weights of the model at `precision`; embeddings and lm_head stay BF16."""
    dense_b, expert_b = linear_bytes(model, precision)
    return (
        non_expert_linear_params(model) * dense_b
        + model.routed_expert_params * expert_b
        + model.embedding_params * BF16_BYTES
    )


def kv_bytes_per_token(model: ModelSpec, kv_cache_dtype: str = "auto") -> int:
    """KV bytes one token occupies across the whole model (all layers, all KV heads, no replication)."""
    b = kv_dtype_bytes(kv_cache_dtype)
    if model.attention == "mla":
        latent = model.num_layers * (model.kv_lora_rank + model.qk_rope_head_dim) * b
        indexer = model.num_layers * (model.index_head_dim + 4) if model.index_head_dim else 0
        return int(latent + indexer)
    return int(2 * model.num_layers * model.num_kv_heads * model.head_dim * b)


def kv_bytes_per_token_per_gpu(model: ModelSpec, kv_cache_dtype: str, tp: int, pp: int) -> int:
    """KV bytes one token occupies on the busiest GPU: its stage's layers, its share of KV heads."""
    layers = math.ceil(model.num_layers / pp)
    b = kv_dtype_bytes(kv_cache_dtype)
    if model.attention == "mla":
        indexer = layers * (model.index_head_dim + 4) if model.index_head_dim else 0
        return int(layers * (model.kv_lora_rank + model.qk_rope_head_dim) * b + indexer)
    return int(2 * layers * math.ceil(model.num_kv_heads / tp) * model.head_dim * b)


def activation_bytes(model: ModelSpec, max_num_batched_tokens: int) -> float:
    """Peak activation + CUDA-graph memory vLLM's profiling run reserves (scaled by the token budget)."""
    base = ACTIVATION_MOE_GIB if model.is_moe else ACTIVATION_DENSE_GIB
    scale = min(2.0, max(0.25, max_num_batched_tokens / ACTIVATION_REF_TOKENS))
    return base * scale * GIB


def non_torch_bytes(gpus: int) -> float:
    return (NON_TORCH_MULTI_GIB if gpus > 1 else NON_TORCH_SINGLE_GIB) * GIB
