"""The three classes of failure the gateway tells apart, written once so the proxy, the docs and the tests
agree (docs/gateway.md, "Resilience").

    RETRYABLE   the same request may succeed elsewhere: connect errors, a reset or a stalled engine before the
                first byte (first-token timeout), HTTP 408, 429, 500, 502, 503, 504, and Bedrock's
                ThrottlingException, ServiceUnavailableException, ModelNotReadyException and
                ModelTimeoutException.
                Retried on another endpoint of the pool while the attempt limit and the retry budget allow.
    FALLBACK    this pool cannot take the request now, the next tier may: retry budget spent, attempts in the
                pool used up, circuit open, no eligible endpoint, the pool sheds (saturated, or predicted TTFT
                above the model's SLO), the prompt longer than the pool's context window.
    TERMINAL    nothing else will do better: 400 and other 4xx validation errors (the same body fails
                everywhere), 401/403 (the client's own key), a client that went away. Passed to the client.

Only failures before the commit point (the first content byte sent to the client) can be retried or fall
back invisibly; after it, see `stream.py`.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorClass(StrEnum):
    RETRYABLE = "retryable"
    FALLBACK = "fallback"
    TERMINAL = "terminal"


RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
RETRYABLE_BEDROCK_CODES = frozenset(
    {
        "ThrottlingException",
        "ServiceUnavailableException",
        "ModelNotReadyException",
        "ModelTimeoutException",
    }
)


def classify_status(status: int) -> ErrorClass | None:
    """The class of an engine's HTTP answer; None for a success (below 400)."""
    if status < 400:
        return None
    if status in RETRYABLE_STATUSES:
        return ErrorClass.RETRYABLE
    if status >= 500:  # 501, 505...: the engine cannot do it; another pool (another engine kind) may
        return ErrorClass.FALLBACK
    return ErrorClass.TERMINAL


def classify_bedrock(code: str) -> ErrorClass:
    """The class of a Bedrock error code (`botocore` `Error.Code`)."""
    if code in RETRYABLE_BEDROCK_CODES:
        return ErrorClass.RETRYABLE
    if code in ("InternalServerException", "ModelErrorException"):
        return ErrorClass.FALLBACK
    return ErrorClass.TERMINAL


class FailureKind(StrEnum):
    """Why one attempt failed before the commit point; the label of the attempts metric."""

    CONNECT = "connect"  # refused, reset or closed before the status line
    BROKEN = "broken"  # headers came, the body broke before any byte reached the client
    TIMEOUT = "first_token_timeout"  # a stalled engine: nothing within first_token_timeout_s
    STATUS = "status"  # a retryable HTTP status (or a managed API's retryable error)
    ERROR_EVENT = "error_event"  # the engine ended its stream with its own 5xx error event (stream.py)


class SkipReason(StrEnum):
    """Why a tier of the cascade was passed over (fall-back-worthy); the label of the fallbacks metric."""

    NO_ENDPOINT = "no_endpoint"
    CIRCUIT_OPEN = "circuit_open"
    SHED_SATURATED = "shed_saturated"
    SHED_TTFT = "shed_ttft"
    CONTEXT = "context_too_long"
    EXHAUSTED = "attempts_exhausted"
    BUDGET = "retry_budget"
    FAILED = "failed"  # a non-retryable server error (501...) from this pool
