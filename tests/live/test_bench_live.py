"""`eksinfer bench` against a real vLLM 0.32 server (run by `make test-live`).

The unit tests check the bench against a server whose timings are known in advance; this one checks that it
reads what a real vLLM sends: its SSE chunks and usage, its `/metrics` prefix-cache counters, its dev-mode
`/reset_prefix_cache`, and the model check on `/v1/models`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.live.conftest import LiveServer
from tests.live.helpers import metric_sum

pytestmark = pytest.mark.live

OUTPUT_LEN = 8
REQUESTS = 12


def _bench_cli(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "eksinfer.cli.main", "bench", "--no-progress", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)


def _bench(server: LiveServer, endpoint: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    workload = {
        "num_groups": 2,
        "num_prompts_per_group": 6,
        "system_prompt_len": 256,
        "question_len": 16,
        "output_len": OUTPUT_LEN,
    }
    return _bench_cli(
        *("--target", server.url, "--model", "tiny-llama", "--endpoint", endpoint),
        *("--concurrency", "2", "--num-requests", str(REQUESTS), "--workload", "shared-prefix"),
        *(arg for key, value in workload.items() for arg in ("-a", f"{key}={value}")),
        *("--ignore-eos", "--metrics-url", server.url + "/metrics", "-o", str(out)),
        *extra,
    )


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_bench_reads_a_real_vllm(live_servers: list[LiveServer], tmp_path: Path, endpoint: str) -> None:
    server = live_servers[0]
    out = tmp_path / "run.json"
    hits0 = metric_sum(server.url, "vllm:prefix_cache_hits_total")
    queries0 = metric_sum(server.url, "vllm:prefix_cache_queries_total")
    proc = _bench(server, endpoint, out, "--reset-prefix-cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    hits = metric_sum(server.url, "vllm:prefix_cache_hits_total") - hits0
    queries = metric_sum(server.url, "vllm:prefix_cache_queries_total") - queries0
    run = json.loads(out.read_text())
    summary = run["summary"]
    ttft = json.dumps({k: round(v, 2) for k, v in summary["ttft_ms"].items()})
    print(f"\nbench {endpoint} on a real vLLM: TTFT ms {ttft}, hit rate {summary['hit_rate']}")

    assert summary["requests"] == {"completed": REQUESTS, "failed": 0, "total": REQUESTS}
    records = [r for r in run["requests"] if not r["warmup"]]
    assert len(records) == REQUESTS
    for rec in records:
        assert rec["error"] is None
        assert rec["output_tokens"] == OUTPUT_LEN  # from vLLM's usage chunk (ignore_eos: exact lengths)
        assert rec["prompt_tokens"] > 200  # vLLM's count of the ~256-token system prompt + question
        assert 0 < rec["ttft_ms"] <= rec["e2e_ms"]
        # A real vLLM packs several tokens into one SSE chunk when its API server falls behind the engine
        # (seen on these shared cores), so there are at most OUTPUT_LEN - 1 gaps, and they add up.
        assert 1 <= len(rec["itl_ms"]) <= OUTPUT_LEN - 1
        assert sum(rec["itl_ms"]) == pytest.approx(rec["last_token_ms"] - rec["ttft_ms"], abs=1e-2)
        tpot = (rec["last_token_ms"] - rec["ttft_ms"]) / (OUTPUT_LEN - 1)
        assert rec["tpot_ms"] == pytest.approx(tpot, abs=1e-3)  # the JSON keeps 4 decimals
    for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        stats = summary[name]
        assert 0 <= stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"], name
    # TPOT and ITL can be 0 on a busy machine: vLLM then sends the whole answer in one burst after the first.
    assert summary["ttft_ms"]["p50"] > 0
    assert summary["e2e_ms"]["p50"] > summary["ttft_ms"]["p50"]
    assert summary["output_tokens"] == REQUESTS * OUTPUT_LEN

    # Nothing else talks to this server during the run, and the bench scrapes right around its measured
    # phase (no warm-up here), so its hit rate must be the counters' own ratio.
    assert queries > 0
    assert summary["hit_rate"]["metrics"] == pytest.approx(hits / queries, abs=1e-9)
    # The cache was reset: each group's first prompt (two at once, at concurrency 2) misses, the rest hit.
    assert 0.3 < summary["hit_rate"]["metrics"] < 1.0
    # vLLM sends cached_tokens only with --enable-prompt-tokens-details, which these servers do not set.
    assert summary["hit_rate"]["cached_tokens"] is None or math.isnan(summary["hit_rate"]["cached_tokens"])


def test_bench_wrong_model_is_one_line(live_servers: list[LiveServer], tmp_path: Path) -> None:
    """A model name the real server does not serve: one line naming it and the served ones, non-zero exit."""
    proc = _bench_cli(
        *("--target", live_servers[0].url, "--model", "no-such-model"),
        *("--concurrency", "1", "--num-requests", "1"),
        timeout_s=60,
    )
    print(f"\nwrong model: exit {proc.returncode}: {proc.stderr.strip()}")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "no-such-model" in lines[0]
    assert "tiny-llama" in lines[0]
