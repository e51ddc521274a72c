"""Transfer metrics of the simulated NixlConnector, with vLLM 0.32's names, help texts and buckets
(vllm/distributed/kv_transfer/kv_connector/v1/nixl/stats.py), plus eksinfer_ gauges vLLM does not have:
the blocks a prefill engine holds for decode engines right now, and the blocks reclaimed from expired leases.

vLLM records a transfer on the side that reads (decode) and expiries on the side that pinned (prefill).
`vllm:nixl_num_descriptors` counts one descriptor per run of contiguous blocks per layer, as a real vLLM 0.32
CPU pull posted them (sim/pd/connector.py `descriptors`).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge

from eksinfer.sim.metrics import EngineMetrics, FastHistogram

XFER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 5.0)
POST_BUCKETS = (0.001, *XFER_BUCKETS)
BYTES_BUCKETS = tuple(float(2 ** (10 + i)) for i in range(1, 25, 2))
DESCRIPTOR_BUCKETS = (10, 20, 30, 50, 75, 100, 200, 400, 1000, 2000, 4000, 10000, 20000, 50000)


class NixlMetrics:
    """Registered in one engine's registry when it runs with --kv-transfer-config."""

    def __init__(self, engine: EngineMetrics, *, consumer: bool = True) -> None:
        reg, lv = engine.registry, engine.labels
        self._lv = lv

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> FastHistogram:
            h = FastHistogram(name, doc, lv, buckets)
            reg.register(h)
            return h

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, tuple(lv), registry=reg)

        self.xfer_time = hist(
            "vllm:nixl_xfer_time_seconds",
            "Histogram of transfer duration for NIXL KV Cache transfers.",
            XFER_BUCKETS,
        )
        self.post_time = hist(
            "vllm:nixl_post_time_seconds",
            "Histogram of transfer post time for NIXL KV Cache transfers.",
            POST_BUCKETS,
        )
        self.bytes = hist(
            "vllm:nixl_bytes_transferred",
            "Histogram of bytes transferred per NIXL KV Cache transfers.",
            BYTES_BUCKETS,
        )
        self.descriptors = hist(
            "vllm:nixl_num_descriptors",
            "Histogram of number of descriptors per NIXL  KV Cache transfers.",
            DESCRIPTOR_BUCKETS,
        )
        self.failed_transfers = counter(
            "vllm:nixl_num_failed_transfers",
            "Number of failed NIXL KV Cache transfers, including handshake and notification failures. "
            "NOTE: KV expiry is tracked separately in vllm:nixl_num_kv_expired_reqs.",
        ).labels(**lv)
        self.failed_notifications = counter(
            "vllm:nixl_num_failed_notifications",
            "Number of failed NIXL KV Cache notifications. "
            "Retained for compatibility; these failures are also included in vllm:nixl_num_failed_transfers.",
        ).labels(**lv)
        self.expired = counter(
            "vllm:nixl_num_kv_expired_reqs",
            "Number of requests that had their KV expire. NOTE: This metric is tracked on the P instance.",
        ).labels(**lv)
        self.notifications_after_expiry = counter(
            "vllm:nixl_num_notifications_after_expiry",
            "Number of completion notifications for requests that were no longer tracked, usually because "
            "their KV lease expired. The KV blocks may have been reused before the transfer finished. "
            "Counted per notification (one per remote rank), not per request.",
        ).labels(**lv)
        self.expired_blocks = counter(
            "eksinfer_nixl_expired_blocks",
            "KV blocks a prefill engine reclaimed because no decode engine pulled them "
            "before the lease ran out.",
        ).labels(**lv)
        self._pinned_blocks = Gauge(
            "eksinfer_nixl_pinned_blocks",
            "KV blocks a prefill engine holds for decode engines to pull (stranded when nobody pulls).",
            tuple(lv),
            registry=reg,
        ).labels(**lv)
        self._pinned_requests = Gauge(
            "eksinfer_nixl_pinned_requests",
            "Finished prefill requests whose blocks wait for a decode engine's pull.",
            tuple(lv),
            registry=reg,
        ).labels(**lv)
        self._fetch: Gauge | None = None
        if consumer:  # vLLM registers it for kv_consumer and kv_both engines (v1/metrics/loggers.py)
            self._fetch = Gauge(
                "vllm:num_requests_kv_fetch_by_stage",
                "Number of waiting requests by async KV load stage. Stage labels: 'waiting_to_start' = needs "
                "an async KV load that has not started; 'in_progress' = load started and not yet reported "
                "finished; 'completed_waiting' = load finished, request not running yet.",
                (*lv, "stage"),
                registry=reg,
            )

    def bind(
        self,
        *,
        pinned_blocks: Callable[[], float],
        pinned_requests: Callable[[], float],
        fetch_stages: dict[str, Callable[[], float]],
    ) -> None:
        self._pinned_blocks.set_function(pinned_blocks)
        self._pinned_requests.set_function(pinned_requests)
        if self._fetch is not None:
            for stage, read in fetch_stages.items():
                self._fetch.labels(**self._lv, stage=stage).set_function(read)
