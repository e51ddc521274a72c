"""The HTTP/1.1 client on the hot path to the engines: keep-alive connections per engine, each an asyncio
protocol with httptools' response parser (llhttp, the parser Node.js and uvicorn use).

Why not aiohttp's client: on the 2-core development VM it costs 195-206 µs of CPU per request against
45-52 µs for this, 4 times more (`make bench ARGS=upstream`), and the proxy needs none of what it adds
(cookies, redirects, decompression, proxies, multipart). What is here is what the proxy needs:
- one request at a time per connection (no pipelining), connections reused while the engine keeps them alive
  and closed after `keepalive_s` idle, shorter than uvicorn's 5 s default so that the engine rarely closes
  a connection while we reuse it; when it does (nothing came back on a reused connection), the request is
  sent once more on a new connection. Go's and aiohttp's clients replay only idempotent requests there; a
  completion may be replayed because it changes nothing but the engine's cache, and nothing reached the
  client yet (the proxy routes such a request to another engine on the same grounds);
- the body is handed over as it arrives (`readany`), with reading paused while more than `HIGH_WATER` bytes
  wait, so a slow client cannot make the gateway buffer an engine's whole stream;
- a response that is not read to its end closes its connection, which is how vLLM learns that the client
  went away and aborts the request.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 256 * 1024  # bytes waiting for the reader before the socket is paused (resumed once read)


class EngineLinkError(Exception):
    """A connection to an engine failed (base of the two below). Not `eksinfer.errors.UpstreamError`: that one
    is for a person (one line, CLI exit 4); this one stays in the gateway, which retries or answers 502."""


class UpstreamConnectError(EngineLinkError, ConnectionError):
    """No response started: the engine could not be reached, or closed the connection before answering.
    Nothing went to the client yet, so the request may be routed elsewhere."""


class UpstreamBrokenError(EngineLinkError, ConnectionError):
    """The response started but the connection broke (or sent bytes that are not HTTP) before its end."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an endpoint URL points: connection key, Host header and the path prefix to put before routes."""

    host: str
    port: int
    tls: bool
    host_header: str
    prefix: str


@functools.lru_cache(maxsize=4096)
def origin_of(url: str) -> Origin:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"endpoint URL {url!r} is not http(s)://host[:port]")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    return Origin(parts.hostname, port, tls, parts.netloc, parts.path.rstrip("/"))


class UpstreamResponse:
    """Status and headers of an engine's answer; the body is read with `readany` / `read`, then `close`."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_closed",
        "_conn",
        "_done",
        "_error",
        "_waiter",
        "content_length",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers  # names in lower case; repeated headers joined with ", "
        length = headers.get("content-length")
        self.content_length = int(length) if length is not None and length.isdigit() else None
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    # --- fed by the connection -------------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        if not self._done:
            self._done = True
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- read by the proxy -----------------------------------------------------------------------------
    async def readany(self) -> bytes:
        """Whatever body bytes have arrived (waiting for some), or b"" once the body is complete."""
        while not self._chunks:
            if self._done:
                if self._error is not None:
                    raise self._error
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self._conn.resume()
        return data

    async def read(self) -> bytes:
        """The rest of the body."""
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    @property
    def complete(self) -> bool:
        return self._done and self._error is None and not self._chunks

    def close(self) -> None:
        """Gives the connection back for reuse if the body was read to its end, else closes it."""
        if self._closed:
            return
        self._closed = True
        self._conn.release(reusable=self._done and self._error is None)


class _Connection(asyncio.Protocol):
    """One keep-alive TCP connection to an engine, carrying one exchange at a time."""

    def __init__(self, pool: UpstreamPool, origin: Origin) -> None:
        self._pool = pool
        self.origin = origin
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._response: UpstreamResponse | None = None
        self._keep_alive = False
        self._paused = False
        self.closed = False
        self.received = False  # any byte of the current exchange arrived
        self.idle = False  # on the pool's idle list
        self.idle_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        if self._head is None:  # bytes nobody asked for, on an idle connection: not one to reuse
            self.abort()
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as err:
            kind = UpstreamConnectError if self._response is None else UpstreamBrokenError
            self._fail(kind(f"invalid HTTP from {self.origin.host_header}: {err}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        response = self._response
        if response is not None and not response._done and not self._keep_alive and exc is None:
            length = response.content_length
            chunked = "chunked" in response.headers.get("transfer-encoding", "")
            if length is None and not chunked:  # a body delimited by the end of the connection
                response._finish()
                return
        reason = f"connection to {self.origin.host_header} closed" + (f": {exc}" if exc else "")
        self._fail(UpstreamBrokenError(reason) if response is not None else UpstreamConnectError(reason))

    # --- httptools callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self._headers.get(key)
        self._headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # an interim answer (103 Early Hints): the real one follows
            return
        self._keep_alive = self._parser.should_keep_alive()
        self._response = UpstreamResponse(self, status, self._headers)
        head = self._head
        if head is not None and not head.done():
            head.set_result(self._response)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._response is not None:
            self._response._finish()

    # --- used by the pool and the response -------------------------------------------------------------
    def send(self, data: list[bytes]) -> asyncio.Future[UpstreamResponse]:
        assert self._transport is not None
        if self._transport.is_closing():  # closed by the engine, and the loop has not told us yet
            self._forget()
            raise UpstreamConnectError(f"connection to {self.origin.host_header} closed")
        self._head = asyncio.get_running_loop().create_future()
        self._response = None
        self.received = False
        self._transport.writelines(data)
        return self._head

    def _fail(self, error: EngineLinkError) -> None:
        head = self._head
        if head is not None and not head.done():
            head.set_exception(error)
        if self._response is not None:
            self._response._finish(error)

    def pause(self) -> None:
        if not self._paused and self._transport is not None and not self.closed:
            self._paused = True
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self._transport is not None and not self.closed:
            self._paused = False
            self._transport.resume_reading()

    def release(self, reusable: bool) -> None:
        self._head = None
        self._response = None
        self.received = False
        if reusable and self._keep_alive and not self.closed:
            self.resume()
            self._pool._give_back(self)
        else:
            self.abort()

    def abort(self) -> None:
        self._forget()
        if self._transport is not None:
            self._transport.abort()

    def _forget(self) -> None:
        """Marks the connection closed and takes it off the pool's idle list."""
        self.closed = True
        self._cancel_idle()
        self._pool._discard(self)

    def _cancel_idle(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None


class UpstreamPool:
    """Keep-alive connections to every engine, opened on demand; one pool per gateway process."""

    def __init__(self, connect_timeout_s: float, keepalive_s: float = 4.0) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._idle: dict[Origin, list[_Connection]] = {}
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    async def post(self, url: str, path: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """Sends `body` to `url + path`; returns once the status line and headers are in."""
        return await self.request("POST", url, path, body, headers)

    async def request(
        self, method: str, url: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamResponse:
        """`post` with another method (the Responses API's GET of a stored response); `path` may carry a
        query string."""
        origin = origin_of(url)
        head = [f"{method} {origin.prefix}{path} HTTP/1.1\r\nHost: {origin.host_header}\r\n"]
        head.append(f"Content-Length: {len(body)}\r\n")
        for name, value in headers.items():
            if not any(c in value for c in "\r\n\0"):  # never let a client's header value split ours
                head.append(f"{name}: {value}\r\n")
        head.append("\r\n")
        data = ["".join(head).encode("utf-8", "surrogateescape"), body]
        conn = self._take_idle(origin)
        if conn is not None:
            try:
                return await self._exchange(conn, data)
            except UpstreamConnectError:
                if conn.received:
                    raise
                # the engine closed the idle connection as we reused it: once more, on a new one
        return await self._exchange(await self._connect(origin), data)

    async def _exchange(self, conn: _Connection, data: list[bytes]) -> UpstreamResponse:
        try:
            return await conn.send(data)
        except BaseException:  # cancelled or failed before the answer began: this connection is done
            conn.abort()
            raise

    def _take_idle(self, origin: Origin) -> _Connection | None:
        """The most recently used idle connection; closed ones are never here (`_Connection._forget`)."""
        idle = self._idle.get(origin)
        if not idle:
            return None
        conn = idle.pop()
        conn.idle = False
        conn._cancel_idle()
        return conn

    def _discard(self, conn: _Connection) -> None:
        if conn.idle:
            conn.idle = False
            self._idle[conn.origin].remove(conn)

    async def _connect(self, origin: Origin) -> _Connection:
        if self._closed:
            raise UpstreamConnectError("the gateway is shutting down")
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if origin.tls:
            tls = self._tls = self._tls or ssl.create_default_context()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin),
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls else None,
                )
        except TimeoutError:
            msg = f"cannot connect to {origin.host_header} within {self._connect_timeout_s:g} s"
            raise UpstreamConnectError(msg) from None
        except OSError as err:
            msg = f"cannot connect to {origin.host_header}: {err.strerror or err}"
            raise UpstreamConnectError(msg) from err
        return conn

    def _give_back(self, conn: _Connection) -> None:
        if self._closed:
            conn.abort()
            return
        self._idle.setdefault(conn.origin, []).append(conn)
        conn.idle = True
        conn.idle_timer = asyncio.get_running_loop().call_later(self._keepalive_s, conn.abort)

    @property
    def idle_connections(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    async def close(self) -> None:
        """Closes the idle connections; connections in use close when their response does."""
        self._closed = True
        for conn in [c for conns in self._idle.values() for c in conns]:
            conn.abort()
        self._idle.clear()
        await asyncio.sleep(0)
