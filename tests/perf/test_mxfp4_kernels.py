"""MXFP4 experts (gpt-oss) take kernel families of their own, with constants fitted on their own runs.

vLLM runs MXFP4 routed experts in W4A16 kernels on Hopper (triton_kernels matmul_ogs, or Marlin) and in
FlashInfer's MXFP4 MoE on Blackwell, with BF16 or (VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1) MXFP8
activations. These tests pin which pair of constants and which tensor rate each engine takes, so that
folding MXFP4 back into another family's constants fails here."""

from __future__ import annotations

import pytest

from eksinfer.catalog import get_gpu, get_model
from eksinfer.perf import build_engine_perf
from eksinfer.perf import engine as E

GPT_OSS = get_model("gpt-oss-120b")


@pytest.mark.parametrize(
    ("gpu", "precision", "family"),
    [
        ("H100", "mxfp4", "mxfp4_w4a16"),
        ("H200", "mxfp4", "mxfp4_w4a16"),
        ("A100-80GB", "mxfp4", "mxfp4_w4a16"),
        ("B200", "mxfp4", "mxfp4_flashinfer"),
        ("B300", "mxfp4", "mxfp4_flashinfer"),
        ("B200", "fp8", "blackwell"),
        ("B200", "fp4", "blackwell"),
        ("B200", "int4", "default"),  # W4A16 INT4 stays in Marlin on Blackwell
        ("H200", "fp8", "default"),
        ("H200", "int4", "default"),
    ],
)
def test_each_expert_format_and_gpu_takes_its_kernel_family(gpu: str, precision: str, family: str) -> None:
    assert E.moe_kernel(get_gpu(gpu), precision) == family


def test_the_mxfp4_families_have_constants_of_their_own() -> None:
    pairs = {
        kernel: E.moe_constants(kernel)
        for kernel in ("default", "blackwell", "mxfp4_w4a16", "mxfp4_flashinfer")
    }
    assert len(set(pairs.values())) == 4  # no family borrows another's pair
    assert pairs["mxfp4_w4a16"] == (E.MXFP4_W4A16_GEMM_FACTOR, E.MXFP4_W4A16_LAYER_OVERHEAD_S)
    assert pairs["mxfp4_flashinfer"] == (E.MXFP4_FLASHINFER_GEMM_FACTOR, E.MXFP4_FLASHINFER_LAYER_OVERHEAD_S)


@pytest.mark.parametrize(
    ("gpu", "overhead"),
    [("H100", "MXFP4_W4A16_LAYER_OVERHEAD_S"), ("B200", "MXFP4_FLASHINFER_LAYER_OVERHEAD_S")],
)
def test_gpt_oss_engines_pay_their_family_per_moe_layer(gpu: str, overhead: str) -> None:
    perf = build_engine_perf(GPT_OSS, get_gpu(gpu), tensor_parallel_size=2, max_model_len=8192)
    expected = E.LAYER_OVERHEAD_S * GPT_OSS.num_layers + getattr(E, overhead) * GPT_OSS.num_moe_layers
    assert perf._overhead_s == pytest.approx(expected, rel=1e-12)
    borrowed = E.LAYER_OVERHEAD_S * GPT_OSS.num_layers + E.MOE_LAYER_OVERHEAD_S * GPT_OSS.num_moe_layers
    assert perf._overhead_s != pytest.approx(borrowed, rel=1e-3)


def _expert_seconds_per_token(factor: float, rate_tflops: float, eta: float, tp: int = 2) -> float:
    flops = 2.0 * GPT_OSS.num_moe_layers * GPT_OSS.experts_per_token * GPT_OSS.expert_params
    return flops / factor / tp / (rate_tflops * 1e12 * eta)


def test_the_expert_gemm_rate_follows_the_activations_the_kernel_runs() -> None:
    b200, h100 = get_gpu("B200"), get_gpu("H100")
    kw = {"tensor_parallel_size": 2, "max_model_len": 8192}
    bf16 = build_engine_perf(GPT_OSS, b200, **kw)._expert_per_token_s  # vLLM's default: BF16 activations
    mxfp8 = build_engine_perf(GPT_OSS, b200, mxfp4_mxfp8=True, **kw)._expert_per_token_s
    factor = E.MXFP4_FLASHINFER_GEMM_FACTOR
    assert bf16 == pytest.approx(_expert_seconds_per_token(factor, b200.bf16_tflops, E.ETA_GEMM))
    assert mxfp8 == pytest.approx(_expert_seconds_per_token(factor, b200.fp8_tflops or 0, E.ETA_GEMM_FP8))
    assert mxfp8 < bf16
    # W4A16 on Hopper: the BF16 MMA rate, and the MXFP8 switch is a Blackwell kernel's, so it changes nothing
    w4a16 = build_engine_perf(GPT_OSS, h100, **kw)._expert_per_token_s
    assert w4a16 == pytest.approx(
        _expert_seconds_per_token(E.MXFP4_W4A16_GEMM_FACTOR, h100.bf16_tflops, E.ETA_GEMM)
    )
    assert build_engine_perf(GPT_OSS, h100, mxfp4_mxfp8=True, **kw)._expert_per_token_s == w4a16
