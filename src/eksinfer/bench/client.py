"""One streamed OpenAI-compatible request, timed at chunk arrival.

Metric definitions (recorded per request, in seconds from `start`, the perf_counter just before the POST):
  ttft        arrival of the first SSE chunk carrying non-empty text (inference-perf's definition; vLLM's
              `bench serve` takes the first chunk with `choices` even when its text is empty, e.g. the chat
              role chunk, so ours is never earlier than vLLM's)
  itl         gaps between consecutive text-bearing chunks, one sample per chunk (as vLLM)
  last_token  arrival of the last text-bearing chunk (vLLM's `latency`)
  e2e         end of the response: [DONE] or end of body (inference-perf's request latency; vLLM stops at the
              last text chunk, so ours adds the trailing usage chunk, typically well under a millisecond)
  output_tokens  `usage.completion_tokens` when the server sends usage, else the number of text chunks
Timestamps are taken with the run's clock (time.perf_counter unless a test injects another) as each line comes
off the socket; parsing happens after.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

Clock = Callable[[], float]  # seconds from an arbitrary origin; time.perf_counter in real runs


@dataclass(slots=True)
class RequestRecord:
    """Everything measured about one request; times in seconds."""

    index: int
    conversation_id: int
    turn: int
    target: str
    scheduled_s: float = 0.0  # when the load shape wanted it sent, from run start
    sent_s: float = 0.0  # when it was sent, from run start
    ttft_s: float | None = None
    last_token_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    chunks: int = 0
    error: str | None = None  # kind: connect, timeout, http_<status>, stream, empty, cancelled
    error_detail: str = ""
    warmup: bool = False
    text: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tpot_s(self) -> float | None:
        """(last token - first token) / (output_tokens - 1): vLLM's and inference-perf's TPOT."""
        if self.ttft_s is None or self.last_token_s is None or self.output_tokens <= 1:
            return None
        return (self.last_token_s - self.ttft_s) / (self.output_tokens - 1)


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None


class _Choice(msgspec.Struct):
    text: str | None = None
    delta: _Delta | None = None
    message: _Delta | None = None


class _Details(msgspec.Struct):
    cached_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _Details | None = None


class _Chunk(msgspec.Struct):
    """Only the fields we read; msgspec skips the rest without building objects for them."""

    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: Any = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)


def _choice_text(choice: _Choice) -> str:
    if choice.text is not None:
        return choice.text
    delta = choice.delta or choice.message
    if delta is None:
        return ""
    return delta.content or delta.reasoning_content or ""


def _take_usage(rec: RequestRecord, usage: _Usage | None) -> None:
    if usage is None:
        return
    if usage.completion_tokens is not None:
        rec.output_tokens = usage.completion_tokens
    if usage.prompt_tokens is not None:
        rec.prompt_tokens = usage.prompt_tokens
    if usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens is not None:
        rec.cached_tokens = usage.prompt_tokens_details.cached_tokens


class _StreamState:
    """Per-request parsing state; `line` is called for each complete SSE line with its arrival time."""

    __slots__ = ("done", "parts", "prev", "rec", "start", "text_chunks", "usage_seen")

    def __init__(self, rec: RequestRecord, start: float, keep_text: bool) -> None:
        self.rec, self.start = rec, start
        self.prev: float | None = None
        self.text_chunks = 0
        self.usage_seen = self.done = False
        self.parts: list[str] | None = [] if keep_text else None

    def line(self, line: bytes, now: float) -> None:
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            self.rec.e2e_s = now - self.start
            return
        rec = self.rec
        chunk = _chunk_decoder.decode(payload)  # DecodeError/ValidationError: caught by send()
        rec.chunks += 1
        if chunk.error is not None:
            raise _StreamError(str(chunk.error)[:200])
        text = _choice_text(chunk.choices[0]) if chunk.choices else ""
        if text:
            self.text_chunks += 1
            if self.prev is None:
                rec.ttft_s = now - self.start
            else:
                rec.itl_s.append(now - self.prev)
            self.prev = now
            if self.parts is not None:
                self.parts.append(text)
        if chunk.usage is not None:
            self.usage_seen = True
            _take_usage(rec, chunk.usage)


class _StreamError(Exception):
    """An error object sent inside the stream."""


async def _read_stream(
    resp: aiohttp.ClientResponse, rec: RequestRecord, start: float, keep_text: bool, clock: Clock
) -> None:
    """Consume the SSE body: one timestamp per network read (lines that arrive together share it), then
    split and decode. Reads to the end of the body even after [DONE], so the connection is reused."""
    state = _StreamState(rec, start, keep_text)
    buf = b""
    async for data in resp.content.iter_any():
        now = clock()
        if state.done:
            continue
        lines = (buf + data).split(b"\n") if buf else data.split(b"\n")
        buf = lines.pop()
        for line in lines:
            if line:  # blank lines separate SSE events
                state.line(line, now)
                if state.done:
                    break
    if buf and not state.done:
        state.line(buf, clock())
    if rec.e2e_s is None:
        rec.e2e_s = clock() - start
    if state.prev is not None:
        rec.last_token_s = state.prev - start
    if not state.usage_seen:
        rec.output_tokens = state.text_chunks
    if state.parts:
        rec.text = "".join(state.parts)
    if state.prev is None:
        rec.error, rec.error_detail = "empty", "no text-bearing chunk in the stream"


async def _read_json(resp: aiohttp.ClientResponse, rec: RequestRecord, start: float, clock: Clock) -> None:
    body = _chunk_decoder.decode(await resp.read())
    rec.e2e_s = clock() - start
    rec.text = _choice_text(body.choices[0]) if body.choices else ""
    _take_usage(rec, body.usage)
    if not rec.text:
        rec.error, rec.error_detail = "empty", "response has no text"


async def send(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    rec: RequestRecord,
    *,
    timeout_s: float,
    keep_text: bool = False,
    headers: dict[str, str] | None = None,
    clock: Clock = time.perf_counter,
) -> None:
    """POST `body` to `url` and fill `rec`; never raises except on cancellation (which marks it cancelled)."""
    stream = bool(body.get("stream"))
    start = clock()
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, json=body, headers=headers) as resp:
                if resp.status != 200:
                    detail = (await resp.text())[:200]
                    rec.error, rec.error_detail = f"http_{resp.status}", detail.replace("\n", " ")
                    return
                if stream:
                    await _read_stream(resp, rec, start, keep_text, clock)
                else:
                    await _read_json(resp, rec, start, clock)
    except TimeoutError:
        rec.error, rec.error_detail = "timeout", f"no complete response within {timeout_s:g} s"
    except asyncio.CancelledError:
        rec.error, rec.error_detail = "cancelled", "run stopped before the response finished"
        raise
    except aiohttp.ClientConnectorError as err:
        rec.error, rec.error_detail = "connect", str(err)[:200]
    except _StreamError as err:
        rec.error, rec.error_detail = "stream", f"error in stream: {err}"
    except msgspec.DecodeError as err:  # also msgspec.ValidationError: a chunk of the wrong shape
        rec.error, rec.error_detail = "stream", f"bad SSE JSON: {err}"[:200]
    except aiohttp.ClientError as err:
        rec.error, rec.error_detail = "stream", f"{type(err).__name__}: {err}"[:200]
