"""vLLM 0.12's DeepGEMM MoE path on Hopper: the padding rows every step computes, and when vLLM took it.

DeepGEMM's contiguous grouped GEMM gets M_sum = tokens x k + local experts x 127 rows; vLLM 0.12 gave the
rows its permute did not fill expert 0, so all of them are computed (PR #30494 marked them -1 for 0.13).
Hand-computed references; no timing.
"""

from __future__ import annotations

import pytest
from benchmarks import bench_plan
from benchmarks.bench_plan import model_spec

from eksinfer.catalog import get_gpu
from eksinfer.perf import build_engine_perf
from eksinfer.perf import engine as E

QWEN = model_spec("Qwen/Qwen3-235B-A22B-FP8")  # 128 experts, top-8, block FP8; the bench's config.json fields
H200 = get_gpu("H200")


def _decode(perf: E.EnginePerf, seqs: int) -> float:
    return perf.step_time_s(
        prefill_tokens=0, prefill_attention_pairs=0, decode_seqs=seqs, decode_context_tokens=seqs * 2000
    )


@pytest.mark.parametrize(("tp", "dp", "ep"), [(2, 1, False), (4, 1, False), (1, 2, False), (2, 1, True)])
def test_the_padding_rows_are_127_per_local_expert_at_the_dense_fp8_rate(tp: int, dp: int, ep: bool) -> None:
    perf = build_engine_perf(
        QWEN, H200, tensor_parallel_size=tp, data_parallel_size=dp, expert_parallel=ep, precision="fp8",
        max_model_len=4096, deepgemm_moe=True,
    )  # fmt: skip
    ranks = tp * dp
    # each rank holds E / ranks whole experts (EP) or a 1 / ranks shard of all E: the same FLOPs per row
    local_expert_params = QWEN.routed_expert_params / ranks
    rate = H200.tflops_for("fp8") * 1e12 * E.ETA_GEMM_FP8
    assert perf._expert_padding_s == pytest.approx(2 * 127 * local_expert_params / rate, rel=1e-12)
    plain = build_engine_perf(
        QWEN, H200, tensor_parallel_size=tp, data_parallel_size=dp, expert_parallel=ep, precision="fp8",
        max_model_len=4096,
    )  # fmt: skip
    assert plain._expert_padding_s == 0.0
    # the routed rows keep the fitted MoE rate either way
    assert perf._expert_per_token_s == plain._expert_per_token_s


def test_a_012_decode_step_pays_the_padding_whatever_its_batch() -> None:
    # Qwen3-235B FP8 on H200, TP 2 (vLLM 0.12 measured 52-56 ms TPOT from 4 to 20 users): with the padding
    # rows the decode step is compute-bound on them, so it barely grows with the batch; without them it reads
    # the touched experts and grows with every expert a new sequence wakes
    padded = build_engine_perf(QWEN, H200, tensor_parallel_size=2, precision="fp8", max_model_len=4096,
                               async_scheduling=False, deepgemm_moe=True)  # fmt: skip
    plain = build_engine_perf(QWEN, H200, tensor_parallel_size=2, precision="fp8", max_model_len=4096,
                              async_scheduling=False)  # fmt: skip
    assert _decode(padded, 4) - _decode(plain, 4) > 0.010  # more than 10 ms a step at 4 users
    growth_padded = _decode(padded, 20) / _decode(padded, 4)
    growth_plain = _decode(plain, 20) / _decode(plain, 4)
    assert growth_padded < 1.15 < growth_plain
    # 4 decodes touch at most 32 of 128 experts, 20 about 93: the padding alone costs more than reading them
    assert padded._expert_padding_s > padded._experts_read_s * padded.touched_experts(20)


@pytest.mark.parametrize(
    ("version", "gpu", "precision", "tp", "expected"),
    [
        ("0.12.0", "H200", "fp8", 2, True),
        ("0.12.0", "H100", "fp8", 4, True),
        ("0.12.0", "H200", "fp8", 8, False),  # PR #29346: DeepGEMM MoE off by default at TP 8
        ("0.13.0", "H200", "fp8", 2, False),  # PR #30494: padding rows marked -1 and skipped
        ("0.19.0", "H200", "fp8", 2, False),
        ("0.11.0", "H200", "fp8", 2, False),  # not checked: not claimed
        ("0.12.0", "B200", "fp8", 2, False),  # Blackwell takes other FP8 MoE kernels
        ("0.12.0", "H200", "int4", 2, False),  # W4A16 experts run in Marlin
        ("", "H200", "fp8", 2, False),  # no recorded version: no claim
        ("0.5.6.post2", "H200", "fp8", 2, False),  # an SGLang version string
    ],
)
def test_the_padded_path_by_version_gpu_precision_and_tp(
    version: str, gpu: str, precision: str, tp: int, expected: bool
) -> None:
    assert E.deepgemm_pads_moe(version, get_gpu(gpu), precision, QWEN, tp) is expected


def test_a_dense_model_never_takes_the_moe_path() -> None:
    dense = model_spec("Qwen/Qwen3-32B")
    assert not E.deepgemm_pads_moe("0.12.0", H200, "fp8", dense, 2)
    perf = build_engine_perf(dense, H200, tensor_parallel_size=2, precision="fp8", deepgemm_moe=True)
    assert perf._expert_padding_s == 0.0


def test_the_bench_predicts_only_the_qwen3_235b_vllm_runs_on_the_padded_path() -> None:
    rows = bench_plan.load_holdout() + bench_plan.load_rows() + bench_plan.load_holdout(backend="sglang")
    on_path = {
        (r.model, r.version)
        for r in rows
        if not r.source.startswith("sglang")
        and E.deepgemm_pads_moe(r.version, get_gpu(bench_plan.GPU_MAP[r.system]), r.precision,
                                model_spec(r.model), r.tp)
    }  # fmt: skip
    assert on_path == {("Qwen/Qwen3-235B-A22B-FP8", "0.12.0")}
