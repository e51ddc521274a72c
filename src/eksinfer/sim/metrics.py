"""Prometheus metrics with vLLM V1's names, types, help texts, labels, buckets (vllm/v1/metrics/loggers.py).

Checked against a real vLLM 0.32 scrape (tests/sim/data/metrics_after_requests.txt): labels
`engine` and `model_name` on every engine metric, `finished_reason` on request_success_total, and the bucket
boundaries below. Each engine has its own registry so replicas in one process do not mix.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

# Bucket boundaries exactly as vLLM 0.32 exposes them.
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
ITERATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
N_BUCKETS = (1, 2, 5, 10, 20)
TTFT_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0)
TTFT_BUCKETS += (2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
ITL_BUCKETS += (5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
LATENCY_BUCKETS: tuple[float, ...] = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0)
LATENCY_BUCKETS += (50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
PREEMPTION_BUCKETS = (1, 2, 3, 4, 5, 10, 20)
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")
LABELS = ("engine", "model_name")


class FastHistogram(Collector):
    """A one-child histogram cheap enough to observe per token, rendered as prometheus_client renders one.

    prometheus_client's Histogram takes a lock and bumps two counters per observation; the simulator observes
    inter-token latency once per generated token, so it keeps plain bucket counts instead.
    """

    def __init__(self, name: str, doc: str, labels: dict[str, str], buckets: tuple[float, ...]) -> None:
        self.name, self.doc = name, doc
        self._label_names, self._label_values = list(labels), list(labels.values())
        self.bounds = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.doc, labels=self._label_names)
        cumulative, buckets = 0, []
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if math.isinf(bound) else repr(bound), float(cumulative)))
        family.add_metric(self._label_values, buckets, self.sum)
        family.samples.append(
            Sample(
                f"{self.name}_created",
                dict(zip(self._label_names, self._label_values, strict=True)),
                self.created,
            )
        )
        yield family


class _LoraInfo(Collector):
    """vllm:lora_requests_info: one sample whose labels list running and waiting adapters."""

    def __init__(
        self, max_lora: int, snapshot: Callable[[], tuple[list[str], list[str]]], now: Callable[[], float]
    ):
        self._max_lora, self._snapshot, self._now = max_lora, snapshot, now

    def collect(self) -> Iterable[Metric]:
        running, waiting = self._snapshot()
        family = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
        )
        family.add_metric([str(self._max_lora), ",".join(running), ",".join(waiting)], self._now())
        yield family


class EngineMetrics:
    """One engine's vLLM metrics. Counters are bumped by the engine once per step or per request."""

    def __init__(self, *, model_name: str, engine: int, cache_labels: dict[str, str]) -> None:
        self.registry = CollectorRegistry()
        # python_info and process_* as a vLLM scrape has them (the process is shared by all replicas)
        PlatformCollector(registry=self.registry)
        ProcessCollector(registry=self.registry)
        self._labels = {"engine": str(engine), "model_name": model_name}
        self.labels = dict(self._labels)
        self._gauges()
        self._counters()
        self._request_histograms()
        info = Gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            sorted({"engine", *cache_labels}),
            registry=self.registry,
        )
        info.labels(**{"engine": str(engine), **cache_labels}).set(1.0)

    def _counter(self, name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, (*LABELS, *extra), registry=self.registry)

    def _gauge(self, name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, (*LABELS, *extra), registry=self.registry)

    def _hist(self, name: str, doc: str, buckets: tuple[float, ...]) -> FastHistogram:
        histogram = FastHistogram(name, doc, self._labels, buckets)
        self.registry.register(histogram)
        return histogram

    def _gauges(self) -> None:
        gauge = self._gauge
        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.waiting_by_reason = gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Reason labels: "
            "'capacity' = waiting for scheduling capacity; "
            "'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). "
            "Sum of all reasons equals vllm:num_requests_waiting.",
            ("reason",),
        )
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")

    def _counters(self) -> None:
        counter, lv, registry = self._counter, self._labels, self.registry
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens."
        ).labels(**lv)
        self.prefix_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        ).labels(**lv)
        self.external_queries = counter(
            "vllm:external_prefix_cache_queries",
            "External prefix cache queries from KV connector cross-instance cache sharing, "
            "in terms of number of queried tokens.",
        ).labels(**lv)
        self.external_hits = counter(
            "vllm:external_prefix_cache_hits",
            "External prefix cache hits from KV connector cross-instance cache sharing, "
            "in terms of number of cached tokens.",
        ).labels(**lv)
        cached_by_source = Counter(
            "vllm:prompt_tokens_cached_by_source",
            "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), "
            "host (offloaded to DRAM), disk, p2p (transferred from another vLLM instance) or "
            "external_unspecified. Counted at admission; sums to vllm:prefix_cache_hits + "
            "vllm:external_prefix_cache_hits.",
            (*LABELS, "source"),
            registry=registry,
        )
        sources = ("device", "host", "p2p", "disk", "external_unspecified")
        by_tier = {s: cached_by_source.labels(**lv, source=s) for s in sources}
        self.cached_device, self.cached_p2p = by_tier["device"], by_tier["p2p"]
        self.preemptions = counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine."
        ).labels(**lv)
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.").labels(**lv)
        by_source = Counter(
            "vllm:prompt_tokens_by_source",
            "Number of prompt tokens by source.",
            (*LABELS, "source"),
            registry=registry,
        )
        self.prompt_computed = by_source.labels(**lv, source="local_compute")
        self.prompt_cache_hit = by_source.labels(**lv, source="local_cache_hit")
        self.prompt_external = by_source.labels(**lv, source="external_kv_transfer")
        self.prompt_cached = counter(
            "vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external)."
        ).labels(**lv)
        self.generation_tokens = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        ).labels(**lv)
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            ("engine", "finished_reason", "model_name"),
            registry=registry,
        )
        self.success = {
            r: success.labels(engine=lv["engine"], finished_reason=r, model_name=lv["model_name"])
            for r in FINISHED_REASONS
        }

    def _request_histograms(self) -> None:
        hist = self._hist
        self.request_prompt_tokens = hist(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", TOKEN_BUCKETS
        )
        self.request_generation_tokens = hist(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", TOKEN_BUCKETS
        )
        self.iteration_tokens = hist(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", ITERATION_BUCKETS
        )
        self.max_generation_tokens = hist(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            TOKEN_BUCKETS,
        )
        self.params_n = hist("vllm:request_params_n", "Histogram of the n request parameter.", N_BUCKETS)
        self.params_max_tokens = hist(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", TOKEN_BUCKETS
        )
        self.ttft = hist(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        self.itl = hist(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS
        )
        self.tpot = hist(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        )
        self.e2e = hist(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            LATENCY_BUCKETS,
        )
        self.queue_time = hist(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            LATENCY_BUCKETS,
        )
        self.inference_time = hist(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            LATENCY_BUCKETS,
        )
        self.prefill_time = hist(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            LATENCY_BUCKETS,
        )
        self.decode_time = hist(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            LATENCY_BUCKETS,
        )
        self.request_preemptions = hist(
            "vllm:request_num_preemptions",
            "Histogram of the number of times a request was preempted.",
            PREEMPTION_BUCKETS,
        )
        self.prefill_kv_computed = hist(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
            TOKEN_BUCKETS,
        )

    def bind_gauges(
        self,
        *,
        running: Callable[[], float],
        waiting: Callable[[], float],
        kv_usage: Callable[[], float],
        deferred: Callable[[], float] | None = None,
    ) -> None:
        """Gauges read live state at scrape time. `deferred`: waiting requests the scheduler skips (vLLM
        counts a request waiting for remote KV there); `waiting` is the rest."""
        lv = self._labels
        self.running.labels(**lv).set_function(running)
        self.waiting_by_reason.labels(**lv, reason="capacity").set_function(waiting)
        if deferred is None:
            self.waiting.labels(**lv).set_function(waiting)
            self.waiting_by_reason.labels(**lv, reason="deferred").set(0.0)
        else:
            self.waiting.labels(**lv).set_function(lambda: waiting() + deferred())
            self.waiting_by_reason.labels(**lv, reason="deferred").set_function(deferred)
        self.kv_usage.labels(**lv).set_function(kv_usage)

    def add_lora_info(
        self, max_lora: int, snapshot: Callable[[], tuple[list[str], list[str]]], now: Callable[[], float]
    ) -> None:
        self.registry.register(_LoraInfo(max_lora, snapshot, now))

    def render(self) -> bytes:
        return generate_latest(self.registry)
