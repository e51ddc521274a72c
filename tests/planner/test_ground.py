"""Unmeasured ground: plans on paths without calibration runs say so, with a wider band, in table and JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from eksinfer.catalog import get_gpu, get_instance, get_model
from eksinfer.cli.main import build_app
from eksinfer.perf.engine import slow_fp8_kv_decode
from eksinfer.planner import Constraints, Plan, PlanRequest, Traffic, make_plan
from eksinfer.planner import ground as G
from eksinfer.planner.evaluate import evaluate_aggregated
from eksinfer.planner.search import Misses, Shape


def _plan(model_id: str, traffic: Traffic | None = None, **constraints: object) -> Plan:
    request = PlanRequest(get_model(model_id), traffic or Traffic(), constraints=Constraints(**constraints))  # type: ignore[arg-type]
    return make_plan(request)


def _inside(plan: Plan) -> None:
    g, p = plan.ground, plan.prediction
    assert g is not None
    assert g.ttft_s[0] <= p.ttft_s <= g.ttft_s[1]
    assert g.tpot_s[0] <= p.tpot_s <= g.tpot_s[1]
    assert g.throughput_tokens_per_s[0] <= p.throughput_tokens_per_s <= g.throughput_tokens_per_s[1]


def test_dense_tp_on_h100_is_calibrated_ground() -> None:
    plan = _plan(
        "llama-3.3-70b", Traffic(requests_per_s=4.0), instance_families=("p5",), kv_cache_dtype="auto"
    )
    assert plan.ground is not None
    assert plan.ground.measured
    assert plan.ground.warnings == []
    assert plan.ground.basis.startswith("calibrated")
    assert plan.ground.ttft_s == pytest.approx(
        (plan.prediction.ttft_s * G.CALIBRATED.ttft[0], plan.prediction.ttft_s * G.CALIBRATED.ttft[1]),
        rel=1e-3,
    )
    _inside(plan)


@pytest.mark.parametrize(
    ("model_id", "constraints", "needle"),
    [
        ("kimi-k2.5", {"instance_families": ("p5",)}, "pipeline parallelism"),
        ("llama-3.1-8b", {"needs_mig": True}, "MIG"),
        ("llama-3.1-8b", {"instance_families": ("g6",)}, "g-family"),
        ("qwen3-235b-a22b", {"instance_families": ("p5en",)}, "MoE"),
    ],
)
def test_unmeasured_paths_warn_and_widen(model_id: str, constraints: dict[str, object], needle: str) -> None:
    plan = _plan(model_id, Traffic(requests_per_s=0.5), **constraints)
    g = plan.ground
    assert g is not None
    assert not g.measured
    assert any(needle in w for w in g.warnings), g.warnings
    assert g.basis.startswith("UNMEASURED")
    width = g.throughput_tokens_per_s[1] / g.throughput_tokens_per_s[0]
    assert width > G.CALIBRATED.tokens[1] / G.CALIBRATED.tokens[0]
    _inside(plan)


def test_disaggregated_plans_are_unmeasured() -> None:
    plan = _plan("glm-5", Traffic(input_tokens=8000, output_tokens=500, requests_per_s=2.0))
    assert plan.mode == "disaggregated"
    assert plan.ground is not None
    assert any("disaggregation" in w for w in plan.ground.warnings)
    assert not plan.alternatives[0].measured


def test_g_family_band_allows_a_60_percent_slower_gpu() -> None:
    plan = _plan("llama-3.1-8b", instance_families=("g6",))
    assert plan.ground is not None
    low, high = plan.ground.throughput_tokens_per_s
    tokens = plan.prediction.throughput_tokens_per_s
    assert (
        low == pytest.approx(G.G_FAMILY.tokens[0] * tokens, rel=1e-3) == pytest.approx(0.4 * tokens, rel=1e-3)
    )
    # paths combine by the widest factor: the calibrated spread still bounds it from above
    assert high == pytest.approx(max(G.G_FAMILY.tokens[1], G.CALIBRATED.tokens[1]) * tokens, rel=1e-3)


def test_warning_shows_in_table_and_json() -> None:
    runner = CliRunner()
    args = ["plan", "--model", "llama-3.1-8b", "--families", "g6"]
    table = runner.invoke(build_app(), args)
    assert table.exit_code == 0, table.output
    assert "UNMEASURED" in table.output
    assert "g-family" in table.output
    doc = json.loads(runner.invoke(build_app(), [*args, "--json"]).output)
    assert doc["ground"]["measured"] is False
    assert len(doc["ground"]["throughput_tokens_per_s"]) == 2
    assert all(alt["measured"] is False for alt in doc["alternatives"] if "g6" in alt["instance_type"])


def _percentile(values: list[float], p: float) -> float:
    xs = sorted(values)
    k = (len(xs) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _assert_band_holds(band: G.Band, runs: list[Any], width: float | None = None) -> None:
    """The 10th-90th percentile of measured / predicted of each metric lies inside the band."""
    for field, (low, high) in (("ttft_ms", band.ttft), ("tpot_ms", band.tpot), ("tok_s", band.tokens)):
        ratios = [getattr(c.row, field) / getattr(c, field) for c in runs]
        assert low <= _percentile(ratios, 0.1), field
        assert _percentile(ratios, 0.9) <= high, field
        if width is not None:
            assert high - low < width, field  # and stays a band, not everything


def test_dp_ep_band_covers_the_measured_dp_runs() -> None:
    # the DP runs of the corpus (MiniMax-M2.5 NVFP4 DP 2 + EP on B200 / B300, Qwen3-235B DP 2 / 4 on H200):
    # the band a DP plan carries holds the 10th-90th percentile of measured / predicted on each metric
    from benchmarks import bench_plan

    runs = [c for c in bench_plan.compare_all(bench_plan.load_holdout()) if c.row.dp > 1]
    assert len(runs) == 27
    assert sum(c.row.ep for c in runs) == 8
    _assert_band_holds(G.DP_EP_RUNS, runs, width=3.0)


def test_dp_plans_warn_with_the_measured_dp_ep_error() -> None:
    request = PlanRequest(get_model("qwen3-235b-a22b"), Traffic(requests_per_s=8.0))
    shape = Shape(get_instance("p5en.48xlarge"), get_gpu("H200"), 2, "aggregated", "fp8", 1, 1, dp=8)
    cand = evaluate_aggregated(request, shape, Misses())
    assert cand is not None
    g = G.assess(request, cand)
    assert not g.measured
    assert any("DP 8" in w and "27 measured DP runs" in w for w in g.warnings), g.warnings
    assert g.band.tpot[1] >= G.DP_EP_RUNS.tpot[1]
    assert g.band.ttft[1] >= G.DP_EP_RUNS.ttft[1]


def test_gpt_oss_band_covers_the_held_out_gpt_oss_runs() -> None:
    # an MXFP4 plan's band holds the 10th-90th percentile of measured / predicted over the 156 held-out
    # gpt-oss runs of the AIConfigurator corpus (InferenceX's: MXFP8 activations on B200, as plans deploy)
    from benchmarks import bench_plan

    runs = [c for c in bench_plan.compare_all(bench_plan.load_holdout()) if c.row.precision == "mxfp4"]
    assert len(runs) == 156
    _assert_band_holds(G.GPT_OSS, runs, width=1.0)


def test_fp8_kv_band_covers_the_fp8_cache_runs_of_the_releases_plans_deploy() -> None:
    # an FP8-KV plan on Blackwell carries the 10th-90th percentile of measured / predicted over the 150
    # held-out FP8-cache runs of vLLM 0.15-0.19; on Hopper that band widened by a judgement (its only
    # FP8-cache runs are vLLM 0.10.2's, a release plans do not deploy)
    from benchmarks import bench_plan

    held = bench_plan.split_runs(bench_plan.compare_all(bench_plan.load_holdout()))[2]
    runs = [c for c in held if c.row.kv_cache_dtype == "fp8" and not slow_fp8_kv_decode(c.row.version)]
    assert len(runs) == 150
    assert {c.row.system for c in runs} == {"b200_sxm"}
    _assert_band_holds(G.FP8_KV_RUNS, runs, width=1.1)
    assert G.FP8_KV_HOPPER.tpot[0] < G.FP8_KV_RUNS.tpot[0]
    assert G.FP8_KV_HOPPER.tpot[1] >= G.FP8_KV_RUNS.tpot[1]
