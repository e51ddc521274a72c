"""`make bench ARGS=observe`: what the per-request observation costs the gateway's event loop, in microseconds
per request, for each `observability:` setting, measured side by side in one run.

Each request runs the observer's whole path in-process, as the proxy calls it: the wrapped handler (record,
context variable), `decided`, `upstream_headers`, `first_token`, `generated`, then `finish` (status board,
access log line, span). The handler itself does nothing, so the figure is the observer's own cost; the
access log writes to a handler that encodes the line and drops it (the I/O of a real sink is the logging
set-up's, not the gateway's). Spans go to an SDK provider with no exporter (export runs in another thread).
Printed as microseconds and as a ratio to the bare handler measured in the same run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from eksinfer.gateway.accesslog import ACCESS_LOGGER
from eksinfer.gateway.observe import ObservabilityConfig, RequestObserver
from eksinfer.gateway.scheduling.framework import Decision, EndpointId, EndpointState

REQUESTS = 20_000
ROUNDS = 3


class _Drop(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)  # the JSON line is built, then dropped


class _Request:
    """The two attributes the observer reads from an aiohttp request."""

    path = "/v1/chat/completions"
    headers: dict[str, str] = {}  # noqa: RUF012 - read only


class _Response:
    status = 200


def _observer(config: ObservabilityConfig, ep: EndpointState) -> RequestObserver:
    provider = None
    if config.tracing:
        from opentelemetry.sdk.trace import TracerProvider

        provider = TracerProvider()
    return RequestObserver(config, lambda: [ep], tracer_provider=provider)


async def _per_request_us(observer: RequestObserver, decision: Decision) -> float:
    async def handler(request: Any) -> Any:
        observer.decided("m", decision)
        observer.upstream_headers({"Content-Type": "application/json"})
        observer.first_token()
        observer.generated(12)
        return _Response()

    wrapped = observer.wrap(handler)
    request: Any = _Request()
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(REQUESTS):
            await wrapped(request)
        best = min(best, time.perf_counter() - started)
    return best / REQUESTS * 1e6


def main(argv: list[str]) -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.handlers[:] = [_Drop()]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    ep = EndpointState(id=EndpointId("10.0.0.1:8000"), url="http://10.0.0.1:8000")
    decision = Decision(
        ep, "prefix-hit", (), preset="kv-aware", prompt_tokens=512, predicted_cached_tokens=448
    )
    settings = {
        "bare handler (all off)": ObservabilityConfig(status_page=False),
        "status page (default)": ObservabilityConfig(),
        "status page + access log": ObservabilityConfig(access_log=True),
        "status page + access log + traces": ObservabilityConfig(access_log=True, tracing=True),
    }
    results = {
        name: asyncio.run(_per_request_us(_observer(cfg, ep), decision)) for name, cfg in settings.items()
    }
    bare = results["bare handler (all off)"]
    print(f"{'setting':<38} {'us/request':>10} {'vs bare':>8} {'added us':>9}")
    for name, us in results.items():
        print(f"{name:<38} {us:>10.2f} {us / bare:>7.1f}x {us - bare:>9.2f}")
