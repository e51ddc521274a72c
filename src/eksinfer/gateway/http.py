"""HTTP helpers shared by the gateway's handlers: OpenAI-style error bodies, the one map from eksinfer's
exception tree to statuses (`error_for`), and API-key checks.

Error bodies follow OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, which the `openai` SDK
turns into its typed exceptions by status (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError,
413/429/503 ...). API keys are compared as SHA-256 digests so the gateway never keeps or logs them in clear.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import msgspec
from aiohttp import web

from eksinfer.errors import EksinferError, UnavailableError, UnknownNameError, UsageError

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> bytes:
    payload = {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }
    return msgspec.json.encode(payload)


RETRY_AFTER_S = 1  # what 429 and 503 answers tell a client to wait (the openai SDK honours Retry-After)


def error_response(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> web.Response:
    """An OpenAI-style error; 429 and 503 carry `Retry-After`."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else None
    return web.Response(
        status=status,
        body=error_body(status, message, param=param, code=code),
        content_type="application/json",
        headers=headers,
    )


SSE_DONE = b"data: [DONE]\n\n"


def sse_event(chunk: object) -> bytes:
    """One server-sent event carrying a JSON chunk, as OpenAI streams are framed."""
    return b"data: " + msgspec.json.encode(chunk) + b"\n\n"


def sse_error_event(status: int, message: str, code: str) -> bytes:
    """The event written into an SSE stream that broke after it started (the status line is already sent)."""
    return b"data: " + error_body(status, message, code=code) + b"\n\n"


class RequestRefused(EksinferError):
    """A request the gateway refuses before routing (body limits, deadline, JSON, required fields), with the
    status and OpenAI `code` the refusal calls for."""

    def __init__(self, status: int, message: str, code: str | None, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


# The exception tree to (status, code), most specific class first. Anything else of the tree raised while
# routing (a plugin's own error) is a 503: the request may succeed once endpoints or their state change.
_STATUS_BY_CLASS: tuple[tuple[type[EksinferError], int, str], ...] = (
    (UnknownNameError, 404, "unknown_name"),
    (UsageError, 400, "invalid_request"),
    (UnavailableError, 503, "no_endpoint"),
    (EksinferError, 503, "no_endpoint"),
)


def error_for(err: EksinferError) -> tuple[int, str | None, str | None]:
    """(status, code, param) of the OpenAI error answering `err`."""
    if isinstance(err, RequestRefused):
        return err.status, err.code, err.param
    for cls, status, code in _STATUS_BY_CLASS:
        if isinstance(err, cls):
            return status, code, None
    raise AssertionError("unreachable: EksinferError is the last row")  # pragma: no cover


def _digest(key: str) -> bytes:
    # Header bytes that are not UTF-8 arrive as lone surrogates; surrogateescape gives the bytes back (they
    # match no configured key) instead of raising.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class ApiKeys:
    """Accepted keys as digests; an empty set means authentication is off."""

    def __init__(self, keys: frozenset[str]) -> None:
        self._digests = frozenset(_digest(k) for k in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, headers: Mapping[str, str]) -> bool:
        """Accepts `Authorization: Bearer KEY` (what the openai SDK sends) or `x-api-key: KEY`."""
        if not self._digests:
            return True
        auth = headers.get("Authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
        return bool(key) and _digest(key) in self._digests

    def __repr__(self) -> str:  # never print keys, not even their digests
        return f"ApiKeys(<{len(self._digests)} keys>)"


def add_fallback_route(app: web.Application) -> None:
    """Unknown paths get an OpenAI-style 404 and known paths with the wrong method a 405 (with `Allow`),
    instead of aiohttp's plain-text pages. A catch-all route rather than a middleware: middlewares run on
    every request, this only when nothing else matched. Call it after every other route is added."""
    allowed: dict[str, set[str]] = {}
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        allowed.setdefault(path, set()).add(route.method)
    dynamic = [r for r in app.router.resources() if isinstance(r, web.DynamicResource)]  # /v1/responses/{id}

    async def fallback(request: web.Request) -> web.Response:
        methods = set(allowed.get(request.path, ()))
        for resource in dynamic:  # a path one of them matches, with another method
            methods |= (await resource.resolve(request))[1]
        if methods:
            response = error_response(
                405, f"{request.method} is not allowed on {request.path}", code="method_not_allowed"
            )
            response.headers["Allow"] = ", ".join(sorted(methods))
            return response
        return error_response(404, f"no route {request.path}", code="not_found")

    app.router.add_route("*", "/{tail:.*}", fallback)
