"""OpenTelemetry traces of requests through the gateway, optional (`pip install 'eksinfer[otel]'`).

One SERVER span per request, child of the client's `traceparent` when it sent one (W3C Trace Context); the
engine receives the gateway span's own `traceparent`, so vLLM's spans (`--otlp-traces-endpoint`) hang under
it. The span carries the routing decision (attributes below) and the answer's status and token counts.

P/D hops: the hop code (gateway/pd/coordinator.py) opens a CLIENT child span of the request span for each
hop, `pd_hop("prefill", ...)` around the prefill request and `start_hop("decode", ...)` for the decode
request (it ends when the decode answer is closed, after its last byte was relayed); each hop sends its own
span's `traceparent` to its engine, so the prefill and decode engines' spans hang under their hop. The
request span gets the `ATTR_PD_*` summary through `set_request_attributes`.

Without the extra nothing here imports OpenTelemetry: `observability.tracing: false` (the default) never
calls `OtelTracer`, and the no-op helpers return at once. With it on and the packages missing, the gateway
refuses to start with one line naming the field.

Export: the tracer provider given (tests: the SDK's in-memory exporter), else the process's global one
when the operator configured it (e.g. `opentelemetry-instrument`), else an SDK provider exporting OTLP/HTTP
to `OTEL_EXPORTER_OTLP_ENDPOINT` (default http://localhost:4318) in a background thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from eksinfer.errors import ConfigError

if TYPE_CHECKING:
    from eksinfer.gateway.accesslog import RequestRecord

log = logging.getLogger(__name__)

# Attribute names: generic ones follow OpenTelemetry semantic conventions (HTTP, GenAI), ours are eksinfer.*
ATTR_ROUTE = "url.path"
ATTR_STATUS = "http.response.status_code"
ATTR_MODEL = "gen_ai.request.model"
ATTR_INPUT_TOKENS = "gen_ai.usage.input_tokens"
ATTR_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
ATTR_REQUEST_ID = "eksinfer.request_id"
ATTR_ENDPOINT = "eksinfer.endpoint"
ATTR_POOL = "eksinfer.pool"
ATTR_PRESET = "eksinfer.route.preset"
ATTR_REASON = "eksinfer.route.reason"
ATTR_PREDICTED_CACHED = "eksinfer.route.predicted_cached_tokens"
ATTR_ATTEMPTS = "eksinfer.attempts"
ATTR_TTFT = "eksinfer.ttft_s"
# P/D (set by the hop code when the request has a P/D profile)
ATTR_PD_MODE = "eksinfer.pd.mode"  # "remote" | "local" | "fallback"
ATTR_PD_PREFILL_ENDPOINT = "eksinfer.pd.prefill.endpoint"
ATTR_PD_PREFILL_POOL = "eksinfer.pd.prefill.pool"
ATTR_PD_PREFILL_DURATION = "eksinfer.pd.prefill.duration_s"
ATTR_PD_PREFILL_CACHED = "eksinfer.pd.prefill.cached_tokens"
ATTR_PD_FALLBACK_REASON = "eksinfer.pd.fallback_reason"
ATTR_PD_DECODE_ENDPOINT = "eksinfer.pd.decode.endpoint"
# on each hop span, beside ATTR_ENDPOINT, ATTR_POOL, ATTR_MODEL, ATTR_INPUT_TOKENS, ATTR_PREDICTED_CACHED
ATTR_PD_ROLE = "eksinfer.pd.role"  # "prefill" | "decode"
ATTR_PD_OUTCOME = "eksinfer.pd.outcome"  # "ok", a prefill fallback reason, or "incomplete" (decode)

INSTRUMENTATION = "eksinfer.gateway"

# The span of the request being served (set by the observer for the handler's task; None when tracing is off).
current_span: contextvars.ContextVar[Any] = contextvars.ContextVar("eksinfer_span", default=None)


class OtelTracer:
    """Starts, annotates and ends request spans; built only when tracing is on."""

    def __init__(self, provider: Any = None) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError:
            msg = "tracing needs OpenTelemetry: pip install 'eksinfer[otel]'"
            raise ConfigError(msg, field="observability.tracing") from None
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self._tracer = (provider or _default_provider(trace)).get_tracer(INSTRUMENTATION)

    def start(self, route: str, headers: Mapping[str, str], request_id: str) -> Any:
        parent = self._propagator.extract(headers)
        return self._tracer.start_span(
            f"POST {route}",
            context=parent,
            kind=self._trace.SpanKind.SERVER,
            attributes={ATTR_ROUTE: route, ATTR_REQUEST_ID: request_id},
        )

    def inject(self, span: Any, headers: MutableMapping[str, str]) -> None:
        """Replaces the client's `traceparent` / `tracestate` with the gateway span's."""
        headers.pop("traceparent", None)
        headers.pop("tracestate", None)
        self._propagator.inject(headers, context=self._trace.set_span_in_context(span))

    def end(self, span: Any, record: RequestRecord) -> None:
        """All attributes in one call at the end: the SDK validates each call's attributes, which is most of a
        span's cost (benchmarks/bench_observe.py)."""
        attrs: dict[str, Any] = {
            ATTR_MODEL: record.model,
            ATTR_STATUS: record.status,
            ATTR_OUTPUT_TOKENS: record.generated_tokens,
            ATTR_ATTEMPTS: record.attempts,
        }
        if record.endpoint:  # routed: the decision that answered
            attrs.update(
                {
                    ATTR_ENDPOINT: record.endpoint,
                    ATTR_POOL: record.pool,
                    ATTR_PRESET: record.preset,
                    ATTR_REASON: record.reason,
                    ATTR_INPUT_TOKENS: record.prompt_tokens,
                    ATTR_PREDICTED_CACHED: record.cached_tokens,
                }
            )
        if record.ttft_s is not None:
            attrs[ATTR_TTFT] = record.ttft_s
        span.set_attributes(attrs)
        if record.status >= 500:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, f"HTTP {record.status}"))
        span.end()

    def hop(self, parent: Any, name: str, attributes: Mapping[str, Any]) -> Hop:
        ctx = self._trace.set_span_in_context(parent)
        kind = self._trace.SpanKind.CLIENT
        span = self._tracer.start_span(name, context=ctx, kind=kind, attributes=attributes)
        headers: dict[str, str] = {}
        self._propagator.inject(headers, context=self._trace.set_span_in_context(span))
        return _OtelHop(self._trace, span, headers)


class Hop:
    """A hop's span as the hop code sees it: the headers to send, attributes to add, then one `end`. This
    base class is the no-op used when tracing is off (no headers: the client's `traceparent` passes)."""

    __slots__ = ("headers",)

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}

    def set(self, attributes: Mapping[str, Any]) -> None:
        """Adds attributes (last value wins)."""

    def end(self, error: str | None = None) -> None:
        """Ends the span; `error` marks it failed with that description. Later calls do nothing."""


class _OtelHop(Hop):
    __slots__ = ("_attrs", "_span", "_trace")

    def __init__(self, trace: Any, span: Any, headers: dict[str, str]) -> None:
        self.headers = headers
        self._trace, self._span = trace, span
        self._attrs: dict[str, Any] = {}

    def set(self, attributes: Mapping[str, Any]) -> None:
        self._attrs.update(attributes)  # set on the span in one call at the end (the SDK checks each call)

    def end(self, error: str | None = None) -> None:
        span, self._span = self._span, None
        if span is None:
            return
        if self._attrs:
            span.set_attributes(self._attrs)
        if error is not None:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
        span.end()


NO_HOP = Hop()


def _default_provider(trace: Any) -> Any:
    """The operator's global provider when set, else an SDK provider exporting OTLP/HTTP."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return provider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    sdk = TracerProvider(resource=Resource.create({"service.name": "eksinfer-gateway"}))
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning("no OTLP exporter installed (pip install 'eksinfer[otel]'): spans are dropped")
        return sdk
    sdk.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return sdk


# --- for the hop code (gateway/pd/): no-ops when tracing is off -------------------------------------------
_tracer_of_span: contextvars.ContextVar[OtelTracer | None] = contextvars.ContextVar(
    "eksinfer_tracer", default=None
)


def bind(tracer: OtelTracer | None, span: Any) -> tuple[contextvars.Token[Any], contextvars.Token[Any]]:
    """Makes `span` the current request span for this task (the observer calls it)."""
    return current_span.set(span), _tracer_of_span.set(tracer)


def unbind(tokens: tuple[contextvars.Token[Any], contextvars.Token[Any]]) -> None:
    current_span.reset(tokens[0])
    _tracer_of_span.reset(tokens[1])


def set_request_attributes(attributes: Mapping[str, Any]) -> None:
    """Adds attributes (e.g. `ATTR_PD_*`) to the current request's span, if any."""
    span = current_span.get()
    if span is not None:
        span.set_attributes(dict(attributes))


def start_hop(name: str, attributes: Mapping[str, Any]) -> Hop:
    """A child span of the current request's span, started now; `NO_HOP` when tracing is off or no request
    span is current. The caller ends it (`Hop.end`) exactly once, also on failure."""
    span, tracer = current_span.get(), _tracer_of_span.get()
    if span is None or tracer is None:
        return NO_HOP
    return tracer.hop(span, name, attributes)


@contextlib.contextmanager
def pd_hop(name: str, attributes: Mapping[str, Any]) -> Iterator[Hop]:
    """`start_hop` around a block: the span ends when the block does, failed (with the exception's class
    name) when the block raises."""
    hop = start_hop(name, attributes)
    try:
        yield hop
    except BaseException as err:
        hop.end(error=type(err).__name__)
        raise
    hop.end()
