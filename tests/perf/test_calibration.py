"""The vendored calibration runs load from a clone, and the model keeps its fitted accuracy on them.

The medians are printed by `make bench ARGS=plan`; here they guard against a change that quietly breaks
the fit (deterministic arithmetic over fixed data, no timing)."""

from __future__ import annotations

import csv
import dataclasses
import statistics

import pytest
from benchmarks import bench_plan


def test_vendored_runs_are_in_the_repository() -> None:
    fitted = bench_plan.load_rows()
    extra = bench_plan.load_holdout()
    assert len(fitted) == 219
    assert {(r.model, r.system, r.precision) for r in extra} == bench_plan.HOLDOUT | bench_plan.B300_FIT
    assert all(r.ttft_ms > 0 and r.tpot_ms > 0 for r in fitted + extra)


def test_calibration_medians_hold() -> None:
    compared = bench_plan.compare_all(bench_plan.load_rows())
    assert len(compared) == 219

    def median(field: str) -> float:
        return statistics.median(abs(c.err(field)) for c in compared)

    # issue 18's goals on calibration data: TPOT <= 10 %, TTFT <= 12 %, throughput <= 8 %
    assert median("tpot_ms") <= 10.0
    assert median("tok_s") <= 8.0
    assert median("ttft_ms") <= 12.0


def test_runs_count_as_async_by_version_engine_or_measurement_date() -> None:
    # vLLM v0.14.0 made async scheduling the default; SGLang overlaps by default; an unversioned run counts
    # by its measurement date, except InferenceMAX's Llama-70B campaign, whose config.yaml turned it on
    assert not bench_plan.overlapped("vllm", "0.12.0", "")
    assert bench_plan.overlapped("vllm", "0.14.0", "")
    assert bench_plan.overlapped("vllm", "0.19.0", "")
    assert bench_plan.overlapped("sglang", "0.5.6", "")
    assert not bench_plan.overlapped("vllm", "", "source_file=x.csv; measured=2025-10-29T00:00:00.000Z")
    assert bench_plan.overlapped("vllm", "", "measured=2026-04-22T00:00:00.000Z")
    assert not bench_plan.overlapped("vllm", "", "no date")
    rows = bench_plan.load_holdout()
    assert {r.model for r in rows if r.async_scheduling} == {
        "moonshotai/Kimi-K2.5",
        "MiniMaxAI/MiniMax-M2.5",
        "openai/gpt-oss-120b",
        bench_plan.LLAMA_CAMPAIGN,
    }
    assert not any(r.async_scheduling for r in rows if r.version == "0.11.2")  # gpt-oss H100, before 0.14
    calibration = bench_plan.load_rows()
    assert {r.model for r in calibration if r.async_scheduling} == {bench_plan.LLAMA_CAMPAIGN}


def _held_out() -> list[bench_plan.Compared]:
    return bench_plan.split_runs(bench_plan.compare_all(bench_plan.load_holdout()))[2]


GPT_OSS = "openai/gpt-oss-120b"


def test_held_out_medians_hold() -> None:
    # issue 18's held-out goals (TTFT 20 %, TPOT and throughput 15 %); a guard, not a fit: no constant is
    # chosen on these runs. 651 distinct runs (855 rows before 2026-12-04, 204 of them second imports of
    # a run: bench_plan.distinct_runs): 17.2 / 8.9 / 9.3 %; gpt-oss alone 8.7 / 7.7 / 7.1 %. Without gpt-oss
    # the TTFT median is 20.7 %, over the line by the B200 Llama runs read as they ran (29-30 % TTFT), and
    # not held here: the goal is the held-out set's (docs/planner.md "The calibration set read as it ran").
    held = _held_out()
    assert len(held) == 651
    gpt_oss = [c for c in held if c.row.model == GPT_OSS]
    assert len(gpt_oss) == 156
    for items in (held, gpt_oss):
        assert statistics.median(abs(c.err("ttft_ms")) for c in items) <= 20.0
        assert statistics.median(abs(c.err("tpot_ms")) for c in items) <= 15.0
        assert statistics.median(abs(c.err("tok_s")) for c in items) <= 15.0


def test_a_run_imported_twice_counts_once() -> None:
    # kimi-k2.5-gap-analysis.csv and the db-dump repeat 2026-04-06.csv's Kimi K2.5 NVFP4 B200 runs to the
    # hundredth of a millisecond; each counts once, the run measured apart (2026-03-25.csv) stays
    raw = [r for r in _corpus_rows() if r["model_path"] == "moonshotai/Kimi-K2.5" and r["precision"] == "fp4"]
    launch = ("b200_sxm", "4", "1024", "1024")
    c4 = [r for r in raw if (r["system"], r["tp_size"], r["isl"], r["osl"]) == launch
          and bench_plan.benchmark_concurrency(r) == 4]  # fmt: skip
    assert sorted(round(float(r["silicon_ttft_ms"]), 1) for r in c4) == [81.5, 169.9, 169.9, 169.9, 176.8]
    rows = [r for r in bench_plan.load_holdout()
            if (r.model, r.system, r.precision) == ("moonshotai/Kimi-K2.5", "b200_sxm", "fp4")
            and r.tp == 4 and r.isl == r.osl and r.concurrency == 4]  # fmt: skip
    assert sorted(round(r.ttft_ms, 1) for r in rows) == [81.5, 169.9, 176.8]
    one = rows[0]
    near = dataclasses.replace(one, ttft_ms=one.ttft_ms * 1.0004, source="another import")
    apart = dataclasses.replace(one, ttft_ms=one.ttft_ms * 1.01)
    assert bench_plan.distinct_runs([one, near, apart]) == [one, apart]


def test_inferencemax_runs_load_as_the_mxfp4_calibration_set() -> None:
    # InferenceMAX run 20667906037 (vLLM 0.13.0): every vLLM gpt-oss-120b row on H100 / H200 / B200
    rows = bench_plan.load_inferencemax()
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.system] = counts.get(r.system, 0) + 1
    assert counts == {"h100_sxm": 43, "h200_sxm": 51, "b200_sxm": 56}
    assert {(r.model, r.system, r.precision) for r in rows} == bench_plan.INFERENCEMAX_FIT
    # designated apart from the held-out set: the AIConfigurator gpt-oss rows stay held out
    assert not bench_plan.INFERENCEMAX_FIT & ({bench_plan.MOE_FIT} | bench_plan.B300_FIT)
    assert all(
        r.async_scheduling and r.version == "0.13.0" for r in rows
    )  # --async-scheduling in the scripts
    # the path each GPU ran: Marlin W4A16 with a BF16 cache on Hopper, MXFP8 activations and FP8 KV on B200
    assert {(r.system == "b200_sxm", r.mxfp4_mxfp8, r.kv_cache_dtype) for r in rows} == {
        (False, False, "auto"),
        (True, True, "fp8"),
    }
    # the client's random lengths are uniform in [int(0.8 L), L]: predicted at their means
    assert {(r.isl, r.osl) for r in rows} == {(921, 921), (921, 7372), (7372, 921)}


def test_inferencemax_rows_agree_with_the_mean_lengths_read_for_them() -> None:
    # each row's mean end-to-end latency = TTFT + (mean output tokens - 1) x TPOT, which holds only if the
    # outputs averaged 0.9 x the nominal length (range ratio 0.8, --ignore-eos)
    path = bench_plan.DATA / bench_plan.INFERENCEMAX_NAME
    with path.open(newline="", encoding="utf-8") as fh:
        raw = [r for r in csv.DictReader(fh) if r["framework"] == "vllm"]
    assert len(raw) == 150
    for r in raw:
        mean_osl = bench_plan.mean_random_length(int(r["output_seq_len"]))
        ttft, tpot = float(r["mean_time_to_first_token_sec"]), float(r["mean_time_per_output_token_sec"])
        e2e = float(r["mean_end_to_end_latency_sec"])
        assert ttft + (mean_osl - 1) * tpot == pytest.approx(e2e, rel=0.03)


def test_mxfp4_fit_holds() -> None:
    # the runs that chose MXFP4_W4A16_* (H100 / H200) and MXFP4_FLASHINFER_* (B200) keep the fit's medians:
    # 4.2 / 7.0 / 6.7 % and 6.6 / 4.3 / 4.1 % (TTFT / TPOT / throughput)
    compared = bench_plan.compare_all(bench_plan.load_inferencemax())
    assert len(compared) == 150
    for systems in (("h100_sxm", "h200_sxm"), ("b200_sxm",)):
        fit = [c for c in compared if c.row.system in systems]
        for field in ("ttft_ms", "tpot_ms", "tok_s"):
            assert statistics.median(abs(c.err(field)) for c in fit) <= 8.0, (systems, field)


def test_gpt_oss_runs_are_the_recorded_releases_predicted_as_mxfp4() -> None:
    # every one-node vLLM run of a recorded release; the 24 without a version are not vendored
    rows = [r for r in bench_plan.load_holdout() if r.model == GPT_OSS]
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        counts[(r.system, r.version)] = counts.get((r.system, r.version), 0) + 1
    assert counts == {
        ("h100_sxm", "0.18.0"): 43,
        ("h100_sxm", "0.11.2"): 6,
        ("h200_sxm", "0.18.0"): 51,
        ("b200_sxm", "0.15.1"): 56,
    }
    # the corpus says fp4 / nvfp4; the checkpoint's experts are MXFP4, with no FP8 KV scheme; they are
    # InferenceX's runs, whose B200 script sets VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1 and an FP8 cache
    assert {(r.system == "b200_sxm", r.precision, r.kv_cache_dtype, r.mxfp4_mxfp8) for r in rows} == {
        (False, "mxfp4", "auto", False),
        (True, "mxfp4", "fp8", True),
    }


def test_blackwell_moe_fit_holds() -> None:
    # the B300 runs that chose BLACKWELL_MOE_GEMM_FACTOR and BLACKWELL_MOE_LAYER_OVERHEAD_S (all 116 vendored
    # since the import's TP 4 x EP 4 encoding is read as the one-node run it was; MiniMax-M2.5 with its
    # script's FP8 cache and 2 x ISL token budget); they keep the fit's medians (16.3 / 8.6 / 7.6 %)
    fit = bench_plan.split_runs(bench_plan.compare_all(bench_plan.load_holdout()))[1]
    assert len(fit) == 116
    assert statistics.median(abs(c.err("ttft_ms")) for c in fit) <= 20.0
    assert statistics.median(abs(c.err("tpot_ms")) for c in fit) <= 10.0
    assert statistics.median(abs(c.err("tok_s")) for c in fit) <= 10.0


def test_nvfp4_runs_of_later_vllm_ran_an_fp8_kv_cache() -> None:
    # the checkpoint's kv_cache_quant_algo decides `auto` from vLLM 0.15; FP8 / INT4 checkpoints keep BF16
    assert bench_plan.checkpoint_kv_dtype("vllm", "0.17.0", "fp4") == "fp8"
    assert bench_plan.checkpoint_kv_dtype("vllm", "0.12.0", "fp4") == "auto"
    assert bench_plan.checkpoint_kv_dtype("vllm", "", "fp4") == "auto"
    assert bench_plan.checkpoint_kv_dtype("vllm", "0.19.0", "fp8") == "auto"
    rows = bench_plan.load_holdout()
    assert {r.kv_cache_dtype for r in rows if r.precision == "fp4" and r.version} == {"fp8"}


KIMI_B200_INT4 = ("moonshotai/Kimi-K2.5", "b200_sxm", "int4")


def test_moe_rows_hold() -> None:
    # issue 18's "MoE rows within 20 %": the held-out MoE runs' medians (14.8 / 9.1 / 9.4 %), and TPOT and
    # throughput for every held-out MoE model and GPU; TTFT per group is not met for Kimi K2.5 NVFP4 B200 and
    # MiniMax-M2.5 H200 (docs/planner.md). A guard, not a fit: Kimi K2.5 H200 chose the
    # MoE constants, the B300 runs the Blackwell MoE ones. Qwen3-235B (vLLM 0.12, TP / DP / EP) meets it only
    # with 0.12's DeepGEMM padding rows (perf.engine.deepgemm_pads_moe): 27-45 % on TPOT without them; NVFP4
    # MoE on B200 only with the Blackwell MoE constants (TPOT 26-28 % slow with the Marlin-fitted ones)
    extra = bench_plan.compare_all(bench_plan.load_holdout())
    groups = {
        ("MiniMaxAI/MiniMax-M2.5", "b200_sxm", "fp4"): 40 + 8 + 3,
        ("moonshotai/Kimi-K2.5", "b200_sxm", "fp4"): 43,
        ("MiniMaxAI/MiniMax-M2.5", "b200_sxm", "fp8"): 86 + 48,
        ("MiniMaxAI/MiniMax-M2.5", "h200_sxm", "fp8"): 15 + 36,
        ("MiniMaxAI/MiniMax-M2.5", "h100_sxm", "fp8"): 30,
        ("moonshotai/Kimi-K2.5", "b200_sxm", "int4"): 15,
        ("Qwen/Qwen3-235B-A22B-FP8", "h200_sxm", "fp8"): 26 + 15 + 4 + 6,
    }
    moe = []
    for (model, system, precision), runs in groups.items():
        rows = [c for c in extra if bench_plan.run_key(c) == (model, system, precision)]
        assert len(rows) == runs
        moe += rows
        for field in ("tpot_ms", "tok_s"):
            assert statistics.median(abs(c.err(field)) for c in rows) <= 20.0, (model, system, field)
    for system in ("h100_sxm", "h200_sxm", "b200_sxm"):  # gpt-oss-120b on every GPU, TTFT included
        rows = [c for c in extra if bench_plan.run_key(c) == (GPT_OSS, system, "mxfp4")]
        moe += rows
        for field in ("ttft_ms", "tpot_ms", "tok_s"):
            assert statistics.median(abs(c.err(field)) for c in rows) <= 20.0, (system, field)
    assert len(moe) == 531
    for field in ("ttft_ms", "tpot_ms", "tok_s"):
        assert statistics.median(abs(c.err(field)) for c in moe) <= 20.0, field
    kimi_b200 = [c for c in extra if bench_plan.run_key(c) == KIMI_B200_INT4]
    assert statistics.median(abs(c.err("ttft_ms")) for c in kimi_b200) <= 20.0
    qwen = [c for c in extra if c.row.model == "Qwen/Qwen3-235B-A22B-FP8"]
    assert statistics.median(abs(c.err("ttft_ms")) for c in qwen) <= 20.0


def _corpus_rows() -> list[dict[str, str]]:
    out = []
    for name in bench_plan.SAMPLE_NAMES:
        with (bench_plan.DATA / name).open(newline="", encoding="utf-8") as fh:
            out += list(csv.DictReader(fh))
    return out


def test_inferencex_runs_run_on_tp_gpus_whatever_the_import_encoding() -> None:
    # the same InferenceX runs appear as (TP, attention DP 1, EP) in 2026-03-25.csv and as (TP, attention DP
    # TP, moe_ep TP x EP) in 2026-04-06.csv: one reading, TP GPUs, for both; the users are what each row
    # records as silicon_concurrency
    raw = [r for r in _corpus_rows() if bench_plan.inferencex_run(r["silicon_data_source"])]
    encoded = [r for r in raw if int(r["attention_dp_size"] or 1) > 1]
    assert encoded
    assert all(int(r["attention_dp_size"]) == int(r["tp_size"]) for r in encoded)
    for r in raw:
        users = int(r["silicon_data_source"].partition("silicon_concurrency=")[2].partition(";")[0])
        assert bench_plan.benchmark_concurrency(r) == users
        tp, dp, _ = bench_plan.inferencex_layout(r)
        assert tp * dp == int(r["tp_size"])  # the GPUs InferenceX's config gave the run
    rows = [r for r in bench_plan.load_holdout() if r.model != "Qwen/Qwen3-235B-A22B-FP8"]
    # the only DP engines are the dp-attn entries of the NVFP4 MiniMax configs (TP 1 x DP 2 + EP); Kimi's
    # scripts never pass --enable-expert-parallel
    assert {(r.tp, r.dp, r.ep) for r in rows if r.dp > 1} == {(1, 2, True)}
    assert {r.system for r in rows if r.dp > 1} == {"b200_sxm", "b300_sxm"}
    assert not any(r.ep for r in rows if r.model == "moonshotai/Kimi-K2.5")


def test_fp8_experts_too_narrow_for_tp_ran_expert_parallel() -> None:
    # vLLM refuses TP 8 for MiniMax-M2.5's 1,536-wide FP8 experts (192 is no multiple of the 128 block), so
    # its TP 8 rows ran EP whatever the import records; TP 4 (384 = 3 blocks) ran as launched
    raw = [
        r for r in _corpus_rows() if r["model_path"] == "MiniMaxAI/MiniMax-M2.5" and r["precision"] == "fp8"
    ]
    assert not bench_plan.fp8_experts_shard(raw[0], 8)
    assert bench_plan.fp8_experts_shard(raw[0], 4)
    rows = [
        r for r in bench_plan.load_holdout() if r.model == "MiniMaxAI/MiniMax-M2.5" and r.system == "h200_sxm"
    ]
    assert {(r.tp, r.ep) for r in rows} == {(4, False), (8, True)}
    assert bench_plan.fp8_experts_shard({**raw[0], "precision": "fp4"}, 8)


def test_minimax_b300_runs_ran_their_scripts_fp8_cache_and_twice_isl_token_budget() -> None:
    # minimaxm2.5_{fp8,fp4}_b300.sh pass --kv-cache-dtype fp8 --max-num-batched-tokens $((ISL * 2)) from
    # their first version; other InferenceX runs keep vLLM's defaults where no script version ties a flag
    rows = bench_plan.load_holdout()
    b300 = [r for r in rows if r.model == "MiniMaxAI/MiniMax-M2.5" and r.system == "b300_sxm"]
    assert b300
    assert {r.kv_cache_dtype for r in b300} == {"fp8"}
    assert {(r.isl, r.max_num_batched_tokens) for r in b300} == {(921, 2048), (7372, 16384)}
    b200 = [r for r in rows if r.model == "MiniMaxAI/MiniMax-M2.5" and r.system == "b200_sxm"]
    assert {r.max_num_batched_tokens for r in b200} == {None}
    assert {r.kv_cache_dtype for r in b200 if r.precision == "fp8"} == {"auto"}


def test_the_llama_campaign_reading_is_the_config_yaml_inferencemax_wrote() -> None:
    # kv-cache-dtype fp8, async-scheduling true on vLLM 0.10.2, --random-range-ratio 0.8: the calibration's
    # and the held-out Llama-70B rows as they ran; every other row passes through unchanged
    with (bench_plan.DATA / bench_plan.CSV_NAME).open(newline="", encoding="utf-8") as fh:
        raw = [r for r in csv.DictReader(fh) if r["model"] == bench_plan.LLAMA_CAMPAIGN]
    assert {(int(r["isl"]), int(r["osl"])) for r in raw} == {(1024, 1024), (1024, 8192), (8192, 1024)}
    rows = bench_plan.load_rows() + bench_plan.load_holdout()
    llama = [r for r in rows if r.model == bench_plan.LLAMA_CAMPAIGN]
    assert len(llama) == 105 + 120
    assert {(r.kv_cache_dtype, r.async_scheduling, r.version) for r in llama} == {("fp8", True, "0.10.2")}
    assert {(r.isl, r.osl) for r in llama} == {(921, 921), (921, 7372), (7372, 921)}
    one = llama[0]  # the throughput at the outputs the users got: TTFT + (mean OSL - 1) x TPOT per request
    assert one.tok_s == pytest.approx(
        one.concurrency * one.osl / ((one.ttft_ms + one.tpot_ms * (one.osl - 1)) / 1e3)
    )
    other = next(r for r in rows if r.model != bench_plan.LLAMA_CAMPAIGN)
    assert bench_plan.llama_campaign_reading(other) is other


def test_inferencex_runs_are_read_at_the_clients_mean_lengths() -> None:
    # --random-range-ratio 0.8: lengths uniform in [int(0.8 L), L]; runs of 2026 and the Llama-3.1-70B
    # campaign of 2025-10-29 (its sweep passed 0.8 too); gpt-oss's vLLM 0.11.2 runs of 2025-12-08 keep their
    # nominal lengths (the setting then is not established), and Qwen3-235B's runs are not InferenceX's
    rows = bench_plan.load_holdout()
    early = {"Qwen/Qwen3-235B-A22B-FP8"}
    mean = [r for r in rows if r.model not in early and r.version != "0.11.2"]
    assert {r.isl for r in mean} == {921, 7372}
    assert {r.osl for r in mean} == {921, 7372}
    nominal = [r for r in rows if r.model in early or r.version == "0.11.2"]
    assert {r.isl for r in nominal} >= {1024, 8192}
    assert not {r.isl for r in nominal} & {921, 7372}
