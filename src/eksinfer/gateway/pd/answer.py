"""The decode answer as the client must see it: `usage.prompt_tokens_details.cached_tokens` says what the
prefiller had cached, not the decode engine's count (which includes every token it pulled over NIXL).

`CachedTokensAnswer` wraps the engine's `UpstreamResponse` and rewrites the usage object on the way through:
a JSON answer is read whole (it is one object) and its length recomputed; a stream is passed through event by
event, only the events that carry a usage object are decoded and re-encoded, and only an incomplete trailing
event is held back until its end arrives.
"""

from __future__ import annotations

from typing import Any

import msgspec

from eksinfer.gateway.pd.protocol import set_cached_tokens
from eksinfer.gateway.upstream import UpstreamResponse

_EVENT_END = b"\n\n"
_DATA = b"data:"


class CachedTokensAnswer(UpstreamResponse):
    """Same reading interface as `UpstreamResponse` (the proxy relays it unchanged)."""

    __slots__ = ("_cached_tokens", "_first", "_inner", "_sse", "_tail")

    def __init__(self, inner: UpstreamResponse, cached_tokens: int) -> None:
        # Not calling super().__init__: every read goes to `inner`, which owns the connection.
        self._inner = inner
        self._cached_tokens = cached_tokens
        self.status = inner.status
        self.headers = inner.headers
        self.content_length = inner.content_length
        self._sse = inner.headers.get("content-type", "").startswith("text/event-stream")
        self._first = True
        self._tail = b""

    async def readany(self) -> bytes:
        if not self._sse:
            if not self._first:
                return b""
            self._first = False
            body = _rewrite_json(await self._inner.read(), self._cached_tokens)
            self.content_length = len(body)
            return body
        while True:
            chunk = await self._inner.readany()
            if not chunk:
                tail, self._tail = self._tail, b""
                return _rewrite_events(tail, self._cached_tokens) if tail else b""
            data = self._tail + chunk if self._tail else chunk
            end = data.rfind(_EVENT_END)
            if end < 0:
                self._tail = data
                continue
            self._tail = data[end + 2 :]
            return _rewrite_events(data[: end + 2], self._cached_tokens)

    @property
    def complete(self) -> bool:
        return self._inner.complete

    def close(self) -> None:
        self._inner.close()


def _rewrite_json(body: bytes, cached_tokens: int) -> bytes:
    try:
        answer = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body  # an engine error page: relayed as it came
    if isinstance(answer, dict) and _fix(answer, cached_tokens):
        return msgspec.json.encode(answer)
    return body


def _rewrite_events(events: bytes, cached_tokens: int) -> bytes:
    """Complete SSE events; those whose data carries a usage object are re-encoded."""
    if b'"usage"' not in events:
        return events
    out = []
    for event in events.split(_EVENT_END):
        if b'"usage"' in event and event.lstrip().startswith(_DATA):
            payload = event.lstrip()[len(_DATA) :].strip()
            try:
                chunk = msgspec.json.decode(payload)
            except msgspec.DecodeError:
                out.append(event)
                continue
            if isinstance(chunk, dict) and _fix(chunk, cached_tokens):
                event = b"data: " + msgspec.json.encode(chunk)
        out.append(event)
    return _EVENT_END.join(out)


def _fix(obj: dict[str, Any], cached_tokens: int) -> bool:
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return False
    set_cached_tokens(usage, cached_tokens)
    return True
