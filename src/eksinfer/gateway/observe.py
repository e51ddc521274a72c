"""Per-request observation: one `RequestRecord` per API request, filled by a few proxy hooks and handed, once
the answer is finished, to the access log, the status board and the tracer.

The record lives in a context variable for the handler's task, so the proxy's hooks (`decided`,
`first_token`, `generated`, `upstream_headers`) need no extra argument threaded through its call chain, and
so does the P/D hop code (`tracing.pd_hop`). `wrap` opens and closes the record around the route handler:
its status is the status line the client received (a stream cut after its first bytes is logged as the
200 it started as, like nginx logs it; the `eksinfer_gateway_requests_total` counter says 502).

    observability:
      access_log: false        # one JSON line per request on the `eksinfer.access` logger
      status_page: true        # GET /status (HTML) and /status.json
      tracing: false           # OpenTelemetry spans; needs `pip install 'eksinfer[otel]'`
      status_window_s: 60      # rolling window of the status page's TTFT percentiles and rates
      recent_decisions: 50     # routing decisions kept for the status page

With everything off but the status page (the default) a request costs about 3 us more (measured in
docs/gateway.md, "Access log, traces and status page").
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field

from eksinfer.gateway.accesslog import AccessLog, RequestRecord, default_handler
from eksinfer.gateway.scheduling.framework import Decision, EndpointState
from eksinfer.gateway.status.board import StatusBoard
from eksinfer.gateway.tracing import OtelTracer, bind, current_span, unbind
from eksinfer.strict import StrictModel

if TYPE_CHECKING:
    from aiohttp import web

Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]

_current: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "eksinfer_record", default=None
)


class ObservabilityConfig(StrictModel):
    access_log: bool = Field(
        False,
        description="Write one JSON line per request (no prompt text) on the `eksinfer.access` logger; "
        "to stdout unless that logger has handlers of its own.",
    )
    status_page: bool = Field(
        True,
        description="Serve GET /status and /status.json (endpoints, load, TTFT percentiles, recent routing "
        "decisions). With auth on, /status.json needs an API key like the API; the page itself holds no data "
        "and reads the key from its URL fragment (/status#key=...), which browsers never send.",
    )
    tracing: bool = Field(
        False,
        description="OpenTelemetry spans per request, `traceparent` sent to the engines; needs the otel "
        "extra. Exported over OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT.",
    )
    status_window_s: float = Field(
        60.0, gt=0, le=3600, description="Rolling window of the status page's percentiles and rates."
    )
    recent_decisions: int = Field(
        50, ge=1, le=1000, description="Routing decisions the status page keeps (newest first)."
    )


def _request_id(header: str | None) -> str:
    """The client's `x-request-id` when it sent a sane one (logs join across hops), else 16 random hex
    digits (os.urandom: ~0.3 us, a uuid4 costs ~1.5 us)."""
    if header and len(header) <= 128 and header.isprintable():
        return header
    return os.urandom(8).hex()


class RequestObserver:
    """The one object the proxy tells about a request's progress."""

    def __init__(
        self,
        config: ObservabilityConfig,
        endpoints: Callable[[], Sequence[EndpointState]],
        gateway_inflight: Callable[[], int] = lambda: 0,
        *,
        default_preset: str = "",
        tracer_provider: Any = None,
    ) -> None:
        self.config = config
        self._default_preset = default_preset
        self.access = AccessLog() if config.access_log else None
        self.board = (
            StatusBoard(
                endpoints,
                gateway_inflight=gateway_inflight,
                window_s=config.status_window_s,
                recent=config.recent_decisions,
            )
            if config.status_page
            else None
        )
        self.tracer = OtelTracer(tracer_provider) if config.tracing else None

    @classmethod
    def off(cls) -> RequestObserver:
        return cls(ObservabilityConfig(status_page=False), lambda: [])

    def start(self) -> None:
        """At gateway start (not import): the access logger's default handler."""
        if self.access is not None:
            default_handler()

    def wrap(self, handler: Handler) -> Handler:
        """The route handler with a record (and a span) open around it."""
        if self.access is None and self.board is None and self.tracer is None:
            return handler

        async def observed(request: web.Request) -> web.StreamResponse:
            rec = RequestRecord(
                _request_id(request.headers.get("x-request-id")),
                request.path,
                time.perf_counter(),
                time.time(),
            )
            token = _current.set(rec)
            span, bound = None, None
            if self.tracer is not None:
                span = self.tracer.start(rec.route, request.headers, rec.request_id)
                bound = bind(self.tracer, span)
            rec.status = 500
            try:
                response = await handler(request)
                rec.status = response.status
                return response
            except asyncio.CancelledError:
                rec.status = 499  # the client went away (nginx's code for it)
                raise
            finally:
                rec.e2e_s = time.perf_counter() - rec.started
                _current.reset(token)
                if bound is not None:
                    unbind(bound)
                self.finish(rec, span)

        return observed

    def finish(self, rec: RequestRecord, span: Any = None) -> None:
        if self.access is not None:
            self.access.write(rec)
        if self.board is not None:
            self.board.record(rec)
        if span is not None and self.tracer is not None:
            self.tracer.end(span, rec)

    # --- proxy hooks ------------------------------------------------------------------------------------
    def decided(self, model: str, decision: Decision) -> None:
        """A routing decision (one per attempt: the last one is the endpoint that answered)."""
        rec = _current.get()
        if rec is None:
            return
        ep = decision.endpoint
        rec.model, rec.endpoint, rec.pool = model, ep.id, ep.pool
        rec.preset, rec.reason = decision.preset or self._default_preset, decision.reason
        rec.prompt_tokens, rec.cached_tokens = decision.prompt_tokens, decision.predicted_cached_tokens
        rec.attempts += 1

    def managed(self, model: str, pool: str) -> None:
        """An attempt on a managed API's pool (Bedrock): no endpoint, no routing decision, only the pool."""
        rec = _current.get()
        if rec is None:
            return
        rec.model, rec.endpoint, rec.pool = model, "", pool
        rec.reason = "managed"
        rec.attempts += 1

    def attempt(self) -> None:
        """An attempt is sent (to an engine or a managed API); its wait counts until it answers or fails."""
        rec = _current.get()
        if rec is not None and rec.ttft_s is None:
            rec.attempt_started = time.perf_counter()

    def attempt_failed(self, kind: str) -> None:
        """The attempt failed before the client's first token: its time goes to `kind` in `ttft_parts`."""
        rec = _current.get()
        if rec is not None and rec.ttft_s is None and rec.attempt_started is not None:
            rec.spend(kind, time.perf_counter() - rec.attempt_started)
            rec.attempt_started = None

    def waited(self, part: str, seconds: float) -> None:
        """Time spent before the first token on something other than an attempt (a retry's backoff)."""
        rec = _current.get()
        if rec is not None and rec.ttft_s is None:
            rec.spend(part, seconds)

    def first_token(self) -> None:
        rec = _current.get()
        if rec is not None and rec.ttft_s is None:
            now = time.perf_counter()
            rec.ttft_s = now - rec.started
            if rec.attempt_started is not None:
                rec.upstream_s = now - rec.attempt_started

    def generated(self, tokens: int) -> None:
        rec = _current.get()
        if rec is not None:
            rec.generated_tokens += tokens

    def upstream_headers(self, headers: MutableMapping[str, str]) -> None:
        """The headers for the engine: our request id when the client sent none (so the engine's logs join
        ours), and the gateway span's `traceparent`."""
        rec = _current.get()
        if rec is None:
            return
        headers.setdefault("x-request-id", rec.request_id)
        if self.tracer is not None:
            span = current_span.get()
            if span is not None:
                self.tracer.inject(span, headers)
