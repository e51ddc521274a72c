"""The analytic performance model shared by the planner and the simulator: pure functions, no I/O.

build_engine_perf(model, gpu, tensor_parallel_size=..., ...) -> EnginePerf   (memory layout + step time)
EnginePerf.step_time_s(prefill_tokens=, prefill_attention_pairs=, decode_seqs=, decode_context_tokens=)
predict_aggregated / predict_prefill / predict_decode                         (steady-state serving)
"""

from __future__ import annotations

from eksinfer.perf.engine import EnginePerf, build_engine_perf, default_batch_limits, load_time_s
from eksinfer.perf.memory import bytes_per_param, kv_bytes_per_token, weight_bytes
from eksinfer.perf.serving import (
    ServingPoint,
    max_running,
    predict_aggregated,
    predict_decode,
    predict_prefill,
)

__all__ = [
    "EnginePerf",
    "ServingPoint",
    "build_engine_perf",
    "bytes_per_param",
    "default_batch_limits",
    "kv_bytes_per_token",
    "load_time_s",
    "max_running",
    "predict_aggregated",
    "predict_decode",
    "predict_prefill",
    "weight_bytes",
]
