"""Weight and KV-cache sizing against hand-computed values and vLLM measurements."""

from __future__ import annotations

import pytest

from eksinfer.catalog import get_gpu, get_model
from eksinfer.errors import InfeasibleError, UsageError
from eksinfer.perf import build_engine_perf, bytes_per_param, kv_bytes_per_token, weight_bytes
from eksinfer.perf.memory import GIB


@pytest.mark.parametrize(
    ("model_id", "kv_dtype", "expected"),
    [
        ("llama-3.1-8b", "auto", 131_072),  # 2 x 32 layers x 8 KV heads x 128 x 2 B
        ("llama-3.1-8b", "fp8", 65_536),
        ("llama-3.3-70b", "auto", 327_680),  # 2 x 80 x 8 x 128 x 2
        ("qwen3-32b", "auto", 262_144),  # 2 x 64 x 8 x 128 x 2
        ("qwen3-235b-a22b", "auto", 192_512),  # 2 x 94 x 4 x 128 x 2
        ("deepseek-v3", "auto", 70_272),  # MLA: 61 x (512 + 64) x 2
        ("kimi-k2.5", "fp8", 35_136),  # 61 x 576 x 1
        ("glm-5", "auto", 100_152),  # 78 x 576 x 2 + indexer 78 x (128 + 4)
    ],
)
def test_kv_bytes_per_token(model_id: str, kv_dtype: str, expected: int) -> None:
    assert kv_bytes_per_token(get_model(model_id), kv_dtype) == expected


def test_bytes_per_param() -> None:
    assert (bytes_per_param("bf16"), bytes_per_param("fp8")) == (2.0, 1.0)
    assert bytes_per_param("int4", 128) == pytest.approx(0.515625)
    assert bytes_per_param("int4", 32) == pytest.approx(0.5625)


def test_weight_bytes() -> None:
    llama = get_model("llama-3.1-8b")
    assert weight_bytes(llama, "bf16") / GIB == pytest.approx(14.96, abs=0.01)  # vLLM loads 14.99 GiB
    # FP8: linear layers 1 B, embedding + lm_head (2 x 128256 x 4096) stay BF16
    assert weight_bytes(llama, "fp8") == pytest.approx((8.030e9 - 1.0507e9) + 1.0507e9 * 2, rel=1e-3)
    # Kimi K2.5: routed experts 60 x 384 x 44.04M x 0.5625 B = 570.8 GB; attention, dense and shared MLPs,
    # routers 9.37B x 2 B = 18.7 GB; embedding + lm_head 2.35B x 2 B = 4.7 GB (the checkpoint is ~594 GB)
    assert weight_bytes(get_model("kimi-k2.5"), "int4") / 1e9 == pytest.approx(594.2, abs=0.1)


def test_kv_blocks_llama_8b_h100() -> None:
    perf = build_engine_perf(get_model("llama-3.1-8b"), get_gpu("H100"))
    # 0.9 x 79.18 GiB - 14.96 weights - 5.2 activation - 0.15 non-torch = 50.95 GiB (vLLM measured 51.38)
    assert perf.kv_cache_bytes_per_gpu / GIB == pytest.approx(50.95, abs=0.01)
    assert perf.num_gpu_blocks == 26_088  # 50.95 GiB / (16 tokens x 131,072 B)
    assert perf.kv_bytes_per_token == 131_072
    assert perf.max_model_len == 131_072
    assert (perf.max_num_batched_tokens, perf.max_num_seqs) == (8192, 1024)


def test_tp_splits_kv_heads_and_replicates_past_them() -> None:
    model, gpu = get_model("qwen3-235b-a22b"), get_gpu("H200")
    tp4 = build_engine_perf(model, gpu, tensor_parallel_size=4, precision="fp8")
    tp8 = build_engine_perf(model, gpu, tensor_parallel_size=8, precision="fp8")
    assert tp4.kv_bytes_per_token_per_gpu == 192_512 // 4  # one KV head per GPU
    assert tp8.kv_bytes_per_token_per_gpu == 192_512 // 4  # 4 KV heads on 8 GPUs: replicated
    pp2 = build_engine_perf(model, gpu, tensor_parallel_size=4, pipeline_parallel_size=2, precision="fp8")
    assert pp2.weight_bytes_per_gpu == pytest.approx(tp4.weight_bytes_per_gpu / 2)
    assert pp2.kv_bytes_per_token_per_gpu == 2 * 47 * 1 * 128 * 2


def test_mla_latent_is_not_split_by_tp() -> None:
    perf = build_engine_perf(get_model("deepseek-v3"), get_gpu("H200"), tensor_parallel_size=8)
    assert perf.kv_bytes_per_token_per_gpu == 70_272


def test_infeasible_names_memory() -> None:
    with pytest.raises(InfeasibleError, match="memory") as info:
        build_engine_perf(get_model("llama-3.3-70b"), get_gpu("H100"))  # 131 GiB of BF16 weights
    assert info.value.binding == ["memory"]
    assert info.value.exit_code == 3
    with pytest.raises(InfeasibleError, match="max_model_len"):
        build_engine_perf(get_model("qwen3-32b"), get_gpu("H100"), max_model_len=40_960)


def test_overrides_and_bad_parallelism() -> None:
    perf = build_engine_perf(get_model("llama-3.1-8b"), get_gpu("L4"), num_gpu_blocks=64, max_model_len=4096)
    assert perf.num_gpu_blocks == 64
    assert perf.kv_capacity_tokens == 1024
    assert (perf.max_num_batched_tokens, perf.max_num_seqs) == (2048, 256)  # vLLM default below 70 GiB
    with pytest.raises(UsageError, match="heads"):
        build_engine_perf(get_model("llama-3.1-8b"), get_gpu("H100"), tensor_parallel_size=3)
