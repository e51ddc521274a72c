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

The engine's own error event. vLLM ends a chat or completion stream that fails after it started with
`data: {"error": {"message", "type", "param", "code"}}` and then its `[DONE]` (`serving_chat.py` /
`serving_completion.py`, `create_streaming_error_response`; `code` is the HTTP status it would have answered:
500 InternalServerError for an engine failure, 400 for a request the template or a parser refused).
`EventGuard` finds that event in the relayed bytes, so a failed engine is not mistaken for a finished
answer: a 5xx (or a code that is no status) is a break like a dropped connection (counted for the outlier
detector and the breaker, retried unseen before the commit point, continued or ended with one error event
after it, and vLLM's `[DONE]` after it is never relayed); a 4xx is the request's own fault (the same body
fails everywhere) and goes to the client as the engine wrote it, without the `[DONE]`. The guard holds back
an event split across reads until it is whole, so the client never gets half of an error event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

ROLE_EVENT = b'"delta":{"role":'
_DONE = b"[DONE]"
_ERROR_KEY = b'{"error"'  # cannot occur unescaped inside a JSON string, so only as an error event's object
_EVENT_END = b"\n\n"


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
            if choice.get("finish_reason"):
                self.continuable = False  # the answer ended: an error after it has nothing to continue
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
    """The request that continues `body` after `sent`; None when it cannot be continued honestly. A chat
    continuation says `continue_final_message: true` (vLLM's option; a managed tier's translation reads it
    too, see bedrock/translate.py); `engine_options` adds vLLM's `add_generation_prompt: false` with it."""
    if not sent.continuable or body.get("n", 1) not in (1, None) or body.get("logprobs"):
        return None
    out = dict(body)
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list):
            return None
        out["messages"] = [*messages, {"role": "assistant", "content": sent.text}]
        out["continue_final_message"] = True
        if engine_options:
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


def without_role(chunk: dict[str, Any]) -> dict[str, Any]:
    """A continuation's first chunk without its `role` (a managed tier sends it with the first content), so
    the client sees the role once, at the start of the stream."""
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return chunk
    delta = choices[0].get("delta")
    if not isinstance(delta, dict) or "role" not in delta:
        return chunk
    first = {**choices[0], "delta": {k: v for k, v in delta.items() if k != "role"}}
    return {**chunk, "choices": [first, *choices[1:]]}


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


@dataclass(frozen=True, slots=True)
class EngineError:
    """vLLM's in-band error event: the bytes it sent, and the status its `code` stands for."""

    event: bytes
    status: int
    message: str

    @property
    def terminal(self) -> bool:
        """A 4xx: the request's own fault, passed to the client; anything else is the engine's failure."""
        return 400 <= self.status < 500

    @property
    def payload(self) -> bytes:
        """The event's JSON, vLLM's error body (what it answers with an HTTP error status)."""
        return self.event.split(b":", 1)[1].strip()

    @classmethod
    def parse(cls, event: bytes) -> EngineError:
        payload = event.split(b":", 1)[1].strip()
        try:
            doc = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            doc = None
        error = doc.get("error") if isinstance(doc, dict) else None
        error = error if isinstance(error, dict) else {}
        code = error.get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else 502
        message = error.get("message")
        return cls(event, status, message if isinstance(message, str) else "the engine sent an error event")


def _error_at(data: bytes) -> int:
    """Offset of the line `data: {"error"...` in `data` (whole events), or -1."""
    i = data.find(_ERROR_KEY)
    while i >= 0:
        start = data.rfind(b"\n", 0, i) + 1
        if data[start:i].rstrip() == b"data:":
            return start
        i = data.find(_ERROR_KEY, i + 1)
    return -1


class EventGuard:
    """Passes whole SSE events of a chat or completion stream and stops at vLLM's in-band error event
    (`error` is then set and nothing more is passed). The healthy path costs an `endswith` and one `find`
    per chunk; only an event split across reads is held back, until its end arrives."""

    __slots__ = ("_partial", "error")

    def __init__(self) -> None:
        self._partial = b""
        self.error: EngineError | None = None

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of `chunk` to relay now."""
        if self.error is not None:
            return b""
        data = self._partial + chunk if self._partial else chunk
        if data.endswith(_EVENT_END):
            self._partial = b""
        else:
            cut = data.rfind(_EVENT_END)
            cut = cut + 2 if cut >= 0 else 0
            data, self._partial = data[:cut], data[cut:]
        if _ERROR_KEY not in data:
            return data
        start = _error_at(data)
        if start < 0:
            return data
        end = data.find(_EVENT_END, start)
        self.error = EngineError.parse(data[start : end + 2])
        self._partial = b""
        return data[:start]

    def flush(self) -> bytes:
        """What is left when the stream ends (an engine that did not end its last event)."""
        rest, self._partial = self._partial, b""
        return rest
