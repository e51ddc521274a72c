"""The decode answer in its hop span: the span ends when the proxy closes the answer, so it covers the whole
decode (first token to last byte relayed), with the status and whether the body arrived whole.

Used only when tracing is on (`PdSend.post`): with tracing off the proxy reads the engine's answer directly.
"""

from __future__ import annotations

from eksinfer.gateway import tracing as tr
from eksinfer.gateway.upstream import UpstreamResponse


class TracedAnswer(UpstreamResponse):
    """Same reading interface as `UpstreamResponse` (the proxy relays it unchanged)."""

    __slots__ = ("_hop", "_inner")

    def __init__(self, inner: UpstreamResponse, hop: tr.Hop) -> None:
        # Not calling super().__init__: every read goes to `inner`, which owns the connection.
        self._inner = inner
        self._hop = hop
        self.status = inner.status
        self.headers = inner.headers
        self.content_length = inner.content_length
        hop.set({tr.ATTR_STATUS: inner.status})

    async def readany(self) -> bytes:
        chunk = await self._inner.readany()
        self.content_length = self._inner.content_length  # a rewritten JSON answer has a new length
        return chunk

    @property
    def complete(self) -> bool:
        return self._inner.complete

    def close(self) -> None:
        complete = self._inner.complete
        self._inner.close()
        self._hop.set({tr.ATTR_PD_OUTCOME: "ok" if complete else "incomplete"})
        if self.status >= 500 or not complete:
            self._hop.end(error=f"HTTP {self.status}" if complete else "the answer ended early")
        else:
            self._hop.end()
