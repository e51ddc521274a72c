"""Memory model: weight bytes by precision, KV bytes per token, and the KV budget vLLM is left with.

KV per token (checked against vLLM: Llama-3.1-8B 131,072 B, Llama-3.1-70B 327,680 B):
    GQA:  2 x layers x kv_heads x head_dim x dtype bytes        (per GPU: ceil(kv_heads / TP), replicated
                                                                  when TP > kv_heads)
    MLA:  layers x (kv_lora_rank + qk_rope_head_dim) x dtype bytes   (latent not sharded by TP)
          + layers x (index_head_dim + 4) bytes for a DeepSeek-sparse-attention indexer key (FP8 + scale)
Sliding-window layers (gpt-oss: 18 of 36 with a 128-token window) under vLLM's hybrid KV-cache manager
(vllm/v1/core/kv_cache_utils.py `_get_kv_cache_groups_uniform_page_size`, `get_kv_cache_config_from_groups`;
docs design/hybrid_kv_cache_manager): layers of one attention type form KV-cache groups of G layers each
(G = the smaller type's layer count, or the larger when it is under 1.5 x the smaller: gpt-oss 18 full + 18
sliding -> G = 18, one full and one sliding group). All groups draw blocks from ONE pool; a block holds
block_size tokens of G layers, so num_blocks = KV memory / (G x block_size x per-layer bytes per token). A
full group keeps ceil(L / block_size) blocks of a sequence of L tokens; a sliding group frees the blocks
that fall out of the window (SlidingWindowManager.remove_skipped_blocks) and keeps the ones covering the last
window - 1 tokens and the current one: at most ceil((window - 1) / block_size) + 1 (gpt-oss, block 16: 9).
So capacity in tokens is set by the full-attention layers, and each sequence pays a fixed window's worth of
blocks on top (`KvLayout.pool_tokens`). While a prompt chunk is prefilled, its sliding group also holds the
blocks of the tokens still in flight (freed once processed); vLLM sizes a request against that bound,
ceil(min(window - 1 + in-flight tokens, L) / block_size) + 1 sliding blocks, where the in-flight tokens are
a token budget per batch in flight, two with async scheduling (vLLM 0.32 kv_cache_interface.py
`SlidingWindowSpec.max_admission_blocks_per_request`, `VllmConfig.max_in_flight_tokens`; it refuses to start
when one max_model_len request does not fit), so `KvLayout.max_seq_tokens` uses it; the steady-state
occupancy (`pool_tokens`) does not.
Per-GPU budget (llm-d-planner capacity_planner.py, fitted on H100 + vLLM):
    kv = util x memory - weights / (TP x PP) - activation - non_torch
    activation = 5.2 GiB dense / 7.6 GiB MoE at 8,192 batched tokens (measured 4.8-5.6 dense, 7.4-8 MoE,
                 CUDA graphs included), scaled with max_num_batched_tokens; non_torch 0.15 GiB at one GPU,
                 0.6 GiB with TP/PP > 1 (NCCL buffers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    16 weights = 0.5625 (NVIDIA ModelOpt's format), MXFP4 0.5 + an E8M0 scale byte per 32 weights = 0.53125
    (OCP Microscaling spec v1.0; gpt-oss's routed experts: `*_blocks` + `*_scales` uint8 tensors)."""
    if precision == "bf16":
        return 2.0
    if precision == "fp8":
        return 1.0
    if precision == "fp4":
        return 0.5 + 1.0 / 16
    if precision == "mxfp4":
        return 0.5 + 1.0 / 32
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


def _layer_bytes(model: ModelSpec, kv_cache_dtype: str, tp: int) -> float:
    """KV bytes of one token in one layer on one GPU (its share of KV heads; MLA latents are not split)."""
    b = kv_dtype_bytes(kv_cache_dtype)
    if model.attention == "mla":
        return (model.kv_lora_rank + model.qk_rope_head_dim) * b + (
            model.index_head_dim + 4 if model.index_head_dim else 0
        )
    return 2 * math.ceil(model.num_kv_heads / tp) * model.head_dim * b


def kv_bytes_per_token(model: ModelSpec, kv_cache_dtype: str = "auto") -> int:
    """KV bytes a token of a long sequence adds across the whole model (no replication): every full-attention
    layer; a sliding-window layer holds only its window, whatever the length (`sliding_kv_bytes`)."""
    return int(model.num_full_attention_layers * _layer_bytes(model, kv_cache_dtype, 1))


def sliding_kv_bytes(model: ModelSpec, kv_cache_dtype: str = "auto") -> int:
    """KV bytes the sliding-window layers hold per sequence once it is longer than the window: window
    tokens in each sliding layer (0 for a model without them)."""
    return int(model.num_sliding_layers * model.sliding_window * _layer_bytes(model, kv_cache_dtype, 1))


@dataclass(frozen=True, slots=True)
class KvLayout:
    """How vLLM's KV-cache manager lays one GPU's KV pool out for this model (see the module docstring).

    `page_layers`: layers whose KV one block holds (the group size G); `full_groups` / `sliding_groups`:
    KV-cache groups of each kind drawing from the one pool. A model without sliding layers has one full group
    of all its (stage's) layers, and a sequence then takes exactly its own tokens from the pool.
    """

    page_layers: int
    full_groups: int
    sliding_groups: int
    sliding_window: int
    block_size: int
    sliding_first: bool = False  # vLLM numbers the groups of layer 0's kind first (gpt-oss: sliding)

    def pool_tokens(self, seq_tokens: float) -> float:
        """Block-tokens a sequence of `seq_tokens` takes from the pool: whole blocks for every full group,
        at most the window's blocks for every sliding group."""
        bs = self.block_size
        blocks = math.ceil(seq_tokens / bs) if seq_tokens > 0 else 0
        window_blocks = math.ceil((self.sliding_window - 1) / bs) + 1 if self.sliding_window else 0
        return float(bs * (self.full_groups * blocks + self.sliding_groups * min(blocks, window_blocks)))

    def max_seq_tokens(self, pool_tokens: int, in_flight_tokens: int) -> int:
        """The longest sequence (--max-model-len) vLLM accepts for a pool of `pool_tokens` block-tokens: its
        whole blocks in every full group plus, in every sliding group, the window and the tokens in flight
        (`engine.max_in_flight_tokens`)."""
        bs, pool_blocks = self.block_size, pool_tokens // self.block_size
        if not self.sliding_groups:
            return pool_blocks // self.full_groups * bs
        admission = self.sliding_window - 1 + in_flight_tokens

        def blocks(tokens: int) -> int:
            sliding = math.ceil(min(admission, tokens) / bs) + 1
            return self.full_groups * math.ceil(tokens / bs) + self.sliding_groups * sliding

        full_blocks = (
            pool_blocks - self.sliding_groups * (math.ceil(admission / bs) + 1)
        ) // self.full_groups
        longest = max(0, full_blocks * bs)
        if longest >= admission:
            return longest
        while longest > 0 and blocks(longest) > pool_blocks:  # a pool smaller than the window's reservation
            longest -= bs
        while blocks(longest + bs) <= pool_blocks:
            longest += bs
        return longest


def kv_layout(model: ModelSpec, pp: int = 1, block_size: int = 16) -> KvLayout:
    """vLLM's KV-cache groups for one pipeline stage (`_get_kv_cache_groups_uniform_page_size`)."""
    full = math.ceil(model.num_full_attention_layers / pp)
    sliding = math.ceil(model.num_sliding_layers / pp) if model.sliding_window else 0
    if not sliding or not full:
        return KvLayout(max(full, sliding), 1, 0, 0, block_size)
    small, large = min(full, sliding), max(full, sliding)
    group = large if large < 1.5 * small else small
    full_groups, sliding_groups = math.ceil(full / group), math.ceil(sliding / group)
    return KvLayout(
        group, full_groups, sliding_groups, model.sliding_window, block_size, model.first_layer_sliding
    )


def kv_bytes_per_token_per_gpu(model: ModelSpec, kv_cache_dtype: str, tp: int, pp: int) -> int:
    """Bytes of one block-token of the KV pool on the busiest GPU: a block's `page_layers` layers, its share
    of KV heads. Without sliding layers, the bytes one token occupies there (all its stage's layers)."""
    layout = kv_layout(model, pp)
    return int(layout.page_layers * _layer_bytes(model, kv_cache_dtype, tp))


def kv_read_bytes_per_token_per_gpu(model: ModelSpec, kv_cache_dtype: str, tp: int) -> tuple[float, float]:
    """(full-attention, sliding-window) KV bytes per context token a decode step reads on one GPU, over
    all stages; the sliding layers read at most `sliding_window` tokens of each sequence."""
    layer = _layer_bytes(model, kv_cache_dtype, tp)
    return model.num_full_attention_layers * layer, model.num_sliding_layers * layer


def activation_bytes(model: ModelSpec, max_num_batched_tokens: int) -> float:
    """Peak activation + CUDA-graph memory vLLM's profiling run reserves (scaled by the token budget)."""
    base = ACTIVATION_MOE_GIB if model.is_moe else ACTIVATION_DENSE_GIB
    scale = min(2.0, max(0.25, max_num_batched_tokens / ACTIVATION_REF_TOKENS))
    return base * scale * GIB


def non_torch_bytes(gpus: int) -> float:
    return (NON_TORCH_MULTI_GIB if gpus > 1 else NON_TORCH_SINGLE_GIB) * GIB
