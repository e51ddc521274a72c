"""Live numbers for the status page, kept in the gateway itself (no Prometheus needed to look at a gateway).

- TTFT P50 / P90, request and error counts and the predicted hit rate come from a rolling window of finished
  requests: the last `window_s` seconds (60 by default), at most `max_samples` of them (4096: at 1,000
  requests/s the window holds the last 4 s, enough for stable percentiles and bounded at ~0.5 MB).
- Percentiles are nearest-rank: the value at rank ceil(p/100 * n) of the sorted window, so a reported P90 is
  a TTFT some request really had. Computed when the page asks (once a second per viewer), never per request.
- Recent routing decisions: a ring of the last `recent` requests (50), newest first.
- Health, in-flight requests and KV usage are read from the endpoints' state at snapshot time.
Per request the board costs one deque append of a small tuple and one of a dict.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from eksinfer.gateway.accesslog import RequestRecord
from eksinfer.gateway.scheduling.framework import EndpointState

# (finished_at, endpoint, ttft_s or None, prompt_tokens, cached_tokens, error)
_Sample = tuple[float, str, float | None, int, int, bool]


def nearest_rank(sorted_values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (0 < p <= 100) by nearest rank; None for an empty window."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


class StatusBoard:
    """Receives every finished request (`record`) and answers `snapshot()` for /status.json."""

    def __init__(
        self,
        endpoints: Callable[[], Sequence[EndpointState]],
        *,
        gateway_inflight: Callable[[], int] = lambda: 0,
        window_s: float = 60.0,
        max_samples: int = 4096,
        recent: int = 50,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._endpoints = endpoints
        self._gateway_inflight = gateway_inflight
        self.window_s = window_s
        self._clock = clock
        self._started = clock()
        self._samples: deque[_Sample] = deque(maxlen=max_samples)
        self._recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self.requests_total = 0
        self.errors_total = 0

    def record(self, rec: RequestRecord) -> None:
        error = rec.status >= 500
        self.requests_total += 1
        self.errors_total += error
        self._samples.append(
            (self._clock(), rec.endpoint, rec.ttft_s, rec.prompt_tokens, rec.cached_tokens, error)
        )
        self._recent.append(
            {
                "ts": rec.wall_started,
                "request_id": rec.request_id,
                "model": rec.model,
                "pool": rec.pool,
                "endpoint": rec.endpoint,
                "preset": rec.preset,
                "reason": rec.reason,
                "status": rec.status,
                "prompt_tokens": rec.prompt_tokens,
                "cached_tokens": rec.cached_tokens,
                "ttft_s": rec.ttft_s,
            }
        )

    def _window(self) -> list[_Sample]:
        cutoff = self._clock() - self.window_s
        while self._samples and self._samples[0][0] < cutoff:
            self._samples.popleft()
        return list(self._samples)

    def snapshot(self) -> dict[str, Any]:
        window = self._window()
        by_endpoint: dict[str, list[_Sample]] = {}
        for sample in window:
            by_endpoint.setdefault(sample[1], []).append(sample)
        pools: dict[str, list[dict[str, Any]]] = {}
        for ep in self._endpoints():
            row = {
                "id": ep.id,
                "healthy": ep.healthy,
                "stale": ep.stale,
                "models": sorted(ep.models),
                "inflight": ep.inflight_requests,
                "inflight_prompt_tokens": ep.inflight_prompt_tokens,
                "running": ep.num_running,
                "waiting": ep.num_waiting,
                "kv_usage": ep.kv_usage,
                **_summary(by_endpoint.get(ep.id, [])),
            }
            pools.setdefault(ep.pool, []).append(row)
        return {
            "uptime_s": round(self._clock() - self._started, 3),
            "window_s": self.window_s,
            "gateway": {
                "inflight": self._gateway_inflight(),
                "requests_total": self.requests_total,
                "errors_total": self.errors_total,
                **_summary(window),
            },
            "pools": [{"name": name, "endpoints": rows} for name, rows in sorted(pools.items())],
            "recent": list(reversed(self._recent)),
        }


def _summary(samples: Sequence[_Sample]) -> dict[str, Any]:
    """Window figures for one endpoint or the whole gateway."""
    ttfts = sorted(s[2] for s in samples if s[2] is not None)
    prompt = sum(s[3] for s in samples)
    cached = sum(s[4] for s in samples)
    return {
        "requests": len(samples),
        "errors": sum(1 for s in samples if s[5]),
        "ttft_p50_s": nearest_rank(ttfts, 50),
        "ttft_p90_s": nearest_rank(ttfts, 90),
        "predicted_hit_rate": cached / prompt if prompt else None,
    }
