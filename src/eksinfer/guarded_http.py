"""The aiohttp server under the gateway and the simulator, hardened against clients that misbehave on purpose.

What aiohttp alone does, and what this module changes:
- a malformed or oversized request head (a 9 KB header line, more than 128 headers, Content-Length together
  with Transfer-Encoding, a line without a colon) is refused with 400, but in plain text and with a full
  traceback logged at ERROR for each one: a cheap way to flood the logs. Here the body is the server's own
  JSON error shape and the log gets one rate-limited WARNING line;
- connections are unlimited: here `max_connections` are served at a time and the next ones get a canned
  503 with `Retry-After` and are closed before their request is read (file descriptors stay bounded);
- a connection may take up to aiohttp's keep-alive timeout (3,630 s) to send its request head, one byte at
  a time (slowloris). aiohttp arms that timer when the connection opens and again after each response, and
  closes the connection when it fires with no complete head read, so `idle_timeout_s` is both the keep-alive
  idle time and the deadline for a request head;
- a body read deadline is not a server setting: handlers read bodies with `read_body`, which bounds it.
Unexpected exceptions in handlers (bugs) still log their traceback, but the client gets JSON, not text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest

from eksinfer.ratelog import RateLimitedLog
from eksinfer.untrusted import one_line

log = logging.getLogger(__name__)

# After an early answer (408, 413) the rest of the body is read and dropped for this long before closing:
# closing with unread bytes makes the kernel send a reset, and the client may lose the answer with it.
# aiohttp's default is 10 s, which a slow-body client fills; 2 s bounds what each one costs.
LINGERING_S = 2.0
ErrorBody = Callable[[int, str, str], bytes]  # (status, message, code) -> a JSON error body


class BodyTimeoutError(Exception):
    """The client did not send its whole body within the body deadline."""


@dataclass(frozen=True, slots=True)
class Guards:
    """Limits of one server; `error_body` renders an error in the server's own JSON shape."""

    error_body: ErrorBody
    idle_timeout_s: float = 75.0
    max_connections: int = 4096
    retry_after_s: int = 1


async def read_body(request: web.Request, timeout_s: float) -> bytes:
    """The whole body, or `BodyTimeoutError` when it takes longer than `timeout_s` (a slow-body client)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise BodyTimeoutError(f"the request body did not arrive within {timeout_s:g} s") from None


class GuardedServer(web.Server):
    """`web.Server` whose connections are `_GuardedHandler`s sharing one connection count."""

    def __init__(self, handler: Any, *, guards: Guards, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.guards = guards
        self.open_connections = 0
        self.refused_connections = 0
        self.bad_requests = 0
        self.warn = RateLimitedLog(log)

    def __call__(self) -> web.RequestHandler:
        return _GuardedHandler(self, loop=self._loop, **self._kwargs)


class _GuardedHandler(web.RequestHandler):
    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guarded = manager
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._guarded
        if server.open_connections >= server.guards.max_connections:
            server.refused_connections += 1
            server.warn.warning(
                "connections",
                "connection limit (%d) reached; refusing new ones",
                server.guards.max_connections,
            )
            retry = server.guards.retry_after_s
            body = server.guards.error_body(
                503,
                f"the server has {server.guards.max_connections} connections open; retry later",
                "overloaded",
            )
            head = (
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Retry-After: {retry}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            assert isinstance(transport, asyncio.Transport)
            transport.write(head.encode() + body)
            transport.close()
            return
        self._counted = True
        server.open_connections += 1
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._counted:
            return  # refused in connection_made: aiohttp never saw it
        self._counted = False
        self._guarded.open_connections -= 1
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        server = self._guarded
        if isinstance(exc, HttpProcessingError):
            server.bad_requests += 1
            text = one_line(message or exc.message or str(exc)) or "malformed request"
            server.warn.warning("bad-http", "bad HTTP request from %s: %s", request.remote, text)
            code = "bad_http_request"
            text = f"malformed HTTP request: {text}"
        else:
            self.log_exception("error handling request from %s", request.remote, exc_info=exc)
            code, text = "internal_error", "internal server error"
        if request.writer.output_size > 0:  # the status line is sent: nothing more can be said
            raise ConnectionError("the response had started; closing the connection")
        response = web.Response(
            status=status, body=server.guards.error_body(status, text, code), content_type="application/json"
        )
        response.force_close()
        return response


class GuardedRunner(web.AppRunner):
    """`web.AppRunner` serving through a `GuardedServer`; `guards.idle_timeout_s` is aiohttp's keep-alive."""

    def __init__(self, app: web.Application, guards: Guards, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", guards.idle_timeout_s)
        kwargs.setdefault("lingering_time", LINGERING_S)
        super().__init__(app, **kwargs)
        self._guards = guards

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        # The same server aiohttp built (handler, request factory, handler kwargs), with guarded connections.
        return GuardedServer(
            plain.request_handler,
            guards=self._guards,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **plain._kwargs,
        )

    @property
    def guarded(self) -> GuardedServer | None:
        server = self.server
        return server if isinstance(server, GuardedServer) else None
