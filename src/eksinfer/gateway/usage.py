"""Generated-token counts from the bytes the gateway relays, without decoding the JSON on the hot path.

An OpenAI-style answer reports `usage.completion_tokens` in its body (non-streamed), or in a last chunk when
streamed with `stream_options.include_usage` (vLLM: also `--enable-force-include-usage`). The proxy relays
bytes unchanged and does not add that option, so a stream without usage is counted as one token per SSE
`data:` event, less `[DONE]` and a chat stream's opening role event (`"delta":{"role":...`, no token): vLLM
sends one event per generated token when n=1 without speculative decoding (an event whose text the
detokenizer holds back still carries its token). With n > 1 or speculative decoding this is an estimate.
"""

from __future__ import annotations

import re

_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_ROLE_EVENT = b'"delta":{"role":'  # vLLM's opening chat event (compact JSON, as its server writes it)


def completion_tokens(data: bytes) -> int | None:
    """The last `completion_tokens` value in `data`, or None when there is none."""
    found = _COMPLETION_TOKENS.findall(data)
    return int(found[-1]) if found else None


class StreamTokens:
    """Counts SSE events chunk by chunk and keeps the last two chunks (no copying per token), where the final
    usage event and `[DONE]` arrive."""

    __slots__ = ("events", "last", "previous")

    def __init__(self) -> None:
        self.events = 0
        self.previous = b""
        self.last = b""

    def feed(self, chunk: bytes) -> None:
        self.events += chunk.count(b"data:") - chunk.count(b"data: [DONE]") - chunk.count(_ROLE_EVENT)
        self.previous, self.last = self.last, chunk

    def tokens(self) -> int:
        reported = completion_tokens(self.previous + self.last)
        return reported if reported is not None else max(0, self.events)
