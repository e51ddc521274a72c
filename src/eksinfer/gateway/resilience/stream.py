"""Streams across failures: the commit point, the text already sent, and the continuation request.

Commit point. Nothing is sent to the client before the first content byte: a chat stream's opening event
(`"delta":{"role":"assistant","content":""}`, which vLLM writes before the first token) is held back with
the next chunk, so an engine that breaks or stalls right after it is still retried unseen. After the commit
point a failure cannot be hidden; the stream ends either with an in-band SSE error event (`data: {"error":
...}`, never a `[DONE]`, which would tell the client the answer was complete), or, when the model opts in
(`models.<name>.continue_streams`), with a continuation.

Continuation. The text already relayed (choice 0 of a chat or completion stream) becomes an assistant prefix:
a chat request gets the original messages plus `{"role": "assistant", "content": <text so far>}` and, for a
vLLM pool, `continue_final_message: true, add_generation_prompt: false` (vLLM's chat options that make the
template leave the last assistant turn open, so the model continues it); a completion request gets the text
appended to its prompt. `max_tokens` is lowered by the events already relayed. The new stream's opening role
event is dropped, so the client sees one stream. What it cannot promise: the same tokens the first engine
would have produced (sampling starts again, a different engine or model may phrase the rest differently),
exact token counts in `usage` (the final usage covers the continuation only), tool calls (a stream that
already sent a tool-call delta, uses `n > 1`, or asks for logprobs is not continued: it ends with the error
event), and more than the text itself (a reasoning model's hidden reasoning is not carried over).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

ROLE_EVENT = b'"delta":{"role":'
_DONE = b"[DONE]"


def is_opening_only(chunk: bytes) -> bool:
    """True when `chunk` is just a chat stream's opening role event with no content yet."""
    return chunk.count(b"data:") == 1 and ROLE_EVENT in chunk and b'"content":""' in chunk


class SentText:
    """The text of choice 0 relayed so far, read from whole SSE events (chunks may split them). Used only for
    models with `continue_streams`, so the default path never decodes the stream."""

    __slots__ = ("_partial", "continuable", "events", "parts")

    def __init__(self) -> None:
        self._partial = b""
        self.parts: list[str] = []
        self.events = 0
        self.continuable = True

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def feed(self, chunk: bytes) -> None:
        data = self._partial + chunk
        *events, self._partial = data.split(b"\n\n")
        for event in events:
            self._event(event)

    def _event(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload or payload == _DONE:
                continue
            try:
                doc = msgspec.json.decode(payload)
            except msgspec.DecodeError:
                self.continuable = False
                return
            self._choice(doc)

    def _choice(self, doc: Any) -> None:
        choices = doc.get("choices") if isinstance(doc, dict) else None
        if not isinstance(choices, list):
            return
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if choice.get("index", 0) != 0 or choice.get("logprobs"):
                self.continuable = False
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if delta.get("tool_calls"):
                    self.continuable = False
                piece = delta.get("content")
                if delta.get("role") and not piece:
                    continue
            else:
                piece = choice.get("text")
            self.events += 1
            if isinstance(piece, str):
                self.parts.append(piece)


def continuation_body(
    body: Mapping[str, Any], chat: bool, sent: SentText, *, engine_options: bool
) -> dict[str, Any] | None:
    """The request that continues `body` after `sent`; None when it cannot be continued honestly.
    `engine_options` adds vLLM's chat-template options (not for a managed API: it refuses unknown fields)."""
    if not sent.continuable or body.get("n", 1) not in (1, None) or body.get("logprobs"):
        return None
    out = dict(body)
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list):
            return None
        out["messages"] = [*messages, {"role": "assistant", "content": sent.text}]
        if engine_options:
            out["continue_final_message"] = True
            out["add_generation_prompt"] = False
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            return None
        out["prompt"] = prompt + sent.text
    for key in ("max_tokens", "max_completion_tokens"):
        limit = body.get(key)
        if isinstance(limit, int):
            left = limit - sent.events
            if left <= 0:
                return None  # the answer was complete in length: nothing left to continue
            out[key] = left
    return out


class ContinuationFilter:
    """Drops the continuation stream's opening role event, so the client sees one stream."""

    __slots__ = ("_opened",)

    def __init__(self) -> None:
        self._opened = False

    def feed(self, chunk: bytes) -> bytes:
        if self._opened:
            return chunk
        if ROLE_EVENT not in chunk:
            self._opened = b"data:" in chunk
            return chunk
        kept = []
        for event in chunk.split(b"\n\n"):
            if not self._opened and ROLE_EVENT in event and b'"content":""' in event:
                self._opened = True
                continue
            kept.append(event)
        return b"\n\n".join(kept)
