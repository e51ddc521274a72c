"""eksinfer bench: a load generator and report for OpenAI-compatible endpoints (vLLM, the gateway, the sim).

Python API::

    import asyncio
    from eksinfer.bench import BenchConfig, run_bench

    config = BenchConfig(
        target="http://127.0.0.1:8000",           # or a list of base URLs, used round robin per conversation
        model="tiny-llama",
        endpoint="chat",                           # "completions" (default) or "chat"
        rate=20.0,                                 # Poisson arrivals, req/s (open loop); or concurrency=8
        num_requests=200,                          # or duration_s=60
        warmup=10,                                 # sent first, left out of every figure
        workload={"type": "shared-prefix", "num_groups": 8, "num_prompts_per_group": 16,
                  "system_prompt_len": 512, "question_len": 64, "output_len": 64},
        slo={"ttft_ms": 500, "tpot_ms": 50},      # goodput counts requests meeting every SLO
        metrics_urls=["http://127.0.0.1:8100/metrics"],   # engine counters for the KV hit rate
        seed=0,
    )
    result = asyncio.run(run_bench(config))        # BenchResult
    result.summary["ttft_ms"]["p99"]               # also tpot_ms, itl_ms, e2e_ms: mean, p50, p90, p99
    result.summary["request_throughput"], result.summary["output_throughput"], result.summary["goodput"]
    result.summary["errors"]                       # {"http_500": 3, "timeout": 1, ...}
    result.summary["hit_rate"]                     # {"metrics": 0.81, "cached_tokens": 0.80}
    result.summary["per_target"]                   # completed, failed, ttft_ms, e2e_ms per target URL
    result.summary["client"]["lag_ms"]             # how late requests left against the schedule
    result.records                                 # one RequestRecord per request (ttft_s, itl_s, e2e_s, ...)
    result.write(Path("run.json"))                 # summary + every request's timings in ms

Other settings: arrival ("poisson" | "constant"), burstiness (gamma arrivals), duration_s, max_tokens,
ignore_eos, api_key, headers, session_header (per-conversation id header), reset_prefix_cache, timeout_s,
check_model. `run_bench(config, stop=event, on_record=fn)`: setting `stop` ends the run early and still
returns what was measured; `on_record` sees each finished request.

`run_sweep(config, rates)` runs one stage per rate (or finds the saturation rate first) and returns a
SweepResult. Workloads: random, shared-prefix, multi-turn, replay (see config.py); metric definitions are
in client.py and result.py, and docs/bench.md compares them with vLLM's, GuideLLM's and inference-perf's.
`eksinfer.bench.fakeserver` is an OpenAI-compatible server with known timings for tests.
"""

from eksinfer.bench.client import RequestRecord
from eksinfer.bench.config import (
    BenchConfig,
    BenchSlo,
    MultiTurnWorkload,
    RandomWorkload,
    ReplayWorkload,
    SharedPrefixWorkload,
)
from eksinfer.bench.result import BenchResult
from eksinfer.bench.runner import run_bench
from eksinfer.bench.sweep import SweepResult, run_sweep

__all__ = [
    "BenchConfig",
    "BenchResult",
    "BenchSlo",
    "MultiTurnWorkload",
    "RandomWorkload",
    "ReplayWorkload",
    "RequestRecord",
    "SharedPrefixWorkload",
    "SweepResult",
    "run_bench",
    "run_sweep",
]
