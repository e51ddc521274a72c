"""Sliding-window layers (gpt-oss: 18 of 36, window 128): the KV they keep, the pool vLLM's hybrid KV-cache
manager gives them, and step-time attention terms bounded by the window. Hand arithmetic in each test."""

from __future__ import annotations

import dataclasses

import pytest

from eksinfer.catalog import get_gpu, get_model
from eksinfer.catalog.models import ModelSpec
from eksinfer.perf import build_engine_perf, max_running
from eksinfer.perf import memory as mem

GPT_OSS = get_model("gpt-oss-120b")
# the same model with every layer attending to the whole context: what ignoring the window would give
ALL_FULL = dataclasses.replace(GPT_OSS, sliding_window=0, num_sliding_layers=0)


def test_kv_bytes_per_token_count_only_full_attention_layers() -> None:
    # one layer, one token: K and V x 8 KV heads x 64 dims x 2 B = 2,048 B
    assert mem.kv_bytes_per_token(GPT_OSS) == 18 * 2048 == 36_864
    assert mem.kv_bytes_per_token(ALL_FULL) == 36 * 2048
    assert mem.kv_bytes_per_token(GPT_OSS, "fp8") == 18 * 1024
    # the sliding layers hold 128 tokens each per sequence, whatever its length
    assert mem.sliding_kv_bytes(GPT_OSS) == 18 * 128 * 2048 == 4_718_592
    assert mem.sliding_kv_bytes(ALL_FULL) == 0


def test_kv_pool_follows_vllms_hybrid_groups() -> None:
    layout = mem.kv_layout(GPT_OSS)
    # 18 full + 18 sliding layers -> groups of 18: one full group, one sliding group, one pool
    assert (layout.page_layers, layout.full_groups, layout.sliding_groups) == (18, 1, 1)
    # a block-token of the pool is 18 layers' KV; TP 8 keeps one of the 8 KV heads per GPU
    assert mem.kv_bytes_per_token_per_gpu(GPT_OSS, "auto", 1, 1) == 36_864
    assert mem.kv_bytes_per_token_per_gpu(GPT_OSS, "auto", 8, 1) == 18 * 2 * 1 * 64 * 2
    # 1,000 tokens: ceil(1000 / 16) = 63 full-group blocks + ceil(127 / 16) + 1 = 9 window blocks
    assert layout.pool_tokens(1000) == (63 + 9) * 16
    assert layout.pool_tokens(100) == (7 + 7) * 16  # shorter than the window: its own blocks twice
    # vLLM starts only if one --max-model-len request fits with the window plus one step's tokens in the
    # sliding group: ceil((127 + 8192) / 16) + 1 = 521 blocks (kv_cache_interface.py SlidingWindowSpec)
    assert layout.max_seq_tokens(5132 * 16, 8192) == (5132 - 521) * 16
    assert layout.max_seq_tokens(600 * 16, 2048) == (600 - 137) * 16  # ceil(2175 / 16) + 1 = 137
    assert mem.kv_layout(ALL_FULL).max_seq_tokens(5132 * 16, 8192) == 5132 * 16
    # a pool under one step's window: L needs ceil(L / 16) + ceil(L / 16) + 1 blocks, 149 x 2 + 1 <= 300
    assert layout.max_seq_tokens(300 * 16, 8192) == 149 * 16
    assert mem.kv_layout(ALL_FULL).pool_tokens(1000) == 63 * 16  # one group: whole blocks only


def test_capacity_in_tokens_is_set_by_the_full_attention_layers() -> None:
    h100 = get_gpu("H100")
    hybrid, full = build_engine_perf(GPT_OSS, h100), build_engine_perf(ALL_FULL, h100)
    assert hybrid.num_gpu_blocks == pytest.approx(2 * full.num_gpu_blocks, abs=1)  # half the bytes per block
    fits = max_running(hybrid, 8192, 1024)
    # 8,192 + 512 tokens held -> 544 full blocks + 9 window blocks
    assert fits == min(hybrid.max_num_seqs, hybrid.num_gpu_blocks // (544 + 9))
    assert fits > 1.9 * max_running(full, 8192, 1024)


def _decode(model: ModelSpec, context: int) -> float:
    perf = build_engine_perf(model, get_gpu("H200"), max_model_len=65_536)
    return perf.step_time_s(
        prefill_tokens=0, prefill_attention_pairs=0, decode_seqs=8, decode_context_tokens=8 * context
    )


def _prefill(model: ModelSpec, cached: int) -> float:
    perf = build_engine_perf(model, get_gpu("H200"), max_model_len=65_536)
    chunk = (
        2048  # a chunk after `cached` tokens attends to cached + (chunk + 1) / 2 keys per query on average
    )
    return perf.step_time_s(
        prefill_tokens=chunk,
        prefill_attention_pairs=chunk * (cached + chunk),
        decode_seqs=0,
        decode_context_tokens=0,
    )


def test_decode_attention_of_sliding_layers_stops_growing_past_the_window() -> None:
    # past the window only the 18 full layers read more KV: the step grows half as fast as with 36 full
    # layers (it would grow as fast if the window were ignored)
    hybrid = _decode(GPT_OSS, 32_768) - _decode(GPT_OSS, 4096)
    full = _decode(ALL_FULL, 32_768) - _decode(ALL_FULL, 4096)
    assert hybrid > 0
    assert hybrid / full == pytest.approx(0.5, rel=1e-6)


def test_prefill_attention_of_sliding_layers_is_bounded_by_the_window() -> None:
    hybrid = _prefill(GPT_OSS, 32_768) - _prefill(GPT_OSS, 4096)
    full = _prefill(ALL_FULL, 32_768) - _prefill(ALL_FULL, 4096)
    assert hybrid / full == pytest.approx(0.5, rel=1e-6)
    # a fresh 2,048-token prompt: the sliding layers see at most 2,048 x 128 pairs, not 2,048^2 / 2
    perf = build_engine_perf(GPT_OSS, get_gpu("H200"), max_model_len=65_536)
    full_perf = build_engine_perf(ALL_FULL, get_gpu("H200"), max_model_len=65_536)
    fresh = {"prefill_tokens": 2048, "prefill_attention_pairs": 2048 * 2048, "decode_seqs": 0}
    saved = full_perf.step_time_s(**fresh, decode_context_tokens=0) - perf.step_time_s(
        **fresh, decode_context_tokens=0
    )
    per_pair = full_perf._attn_per_pair_s / 2  # one half of the layers
    assert saved == pytest.approx(per_pair * (2048 * 2048 / 2 - 2048 * 128), rel=1e-6)


def test_attention_sinks_add_no_kv() -> None:
    no_sinks = dataclasses.replace(GPT_OSS, attention_sinks=False)
    assert mem.kv_bytes_per_token(no_sinks) == mem.kv_bytes_per_token(GPT_OSS)
    with_sinks, without = _decode(GPT_OSS, 4096), _decode(no_sinks, 4096)
    assert with_sinks >= without
    assert with_sinks - without < 1e-3 * without  # one extra logit per query and head: negligible
