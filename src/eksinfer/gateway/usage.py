"""Generated-token counts from the bytes the gateway relays, without decoding the JSON on the hot path.

An OpenAI-style answer reports `usage.completion_tokens` in its body (non-streamed), or in a last chunk when
streamed with `stream_options.include_usage` (vLLM: also `--enable-force-include-usage`). The proxy relays
bytes unchanged and does not add that option, so a stream without usage is counted as one token per SSE
`data:` event other than `[DONE]`: vLLM sends one event per generated token when n=1 without speculative
decoding; a chat stream's first event (the role, no token) makes this one too many per chat stream.
"""

from __future__ import annotations

import re

_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


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
        self.events += chunk.count(b"data:") - chunk.count(b"data: [DONE]")
        self.previous, self.last = self.last, chunk

    def tokens(self) -> int:
        reported = completion_tokens(self.previous + self.last)
        return reported if reported is not None else max(0, self.events)
