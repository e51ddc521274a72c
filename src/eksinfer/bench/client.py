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
Timestamps are taken with time.perf_counter as each line comes off the socket; parsing happens after.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

_decoder = msgspec.json.Decoder()


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


def _chunk_text(choice: dict[str, Any]) -> str:
    if "text" in choice:
        return str(choice["text"] or "")
    delta = choice.get("delta") or choice.get("message") or {}
    return str(delta.get("content") or delta.get("reasoning_content") or "")


def _take_usage(rec: RequestRecord, usage: dict[str, Any] | None) -> None:
    if not usage:
        return
    if usage.get("completion_tokens") is not None:
        rec.output_tokens = int(usage["completion_tokens"])
    if usage.get("prompt_tokens") is not None:
        rec.prompt_tokens = int(usage["prompt_tokens"])
    details = usage.get("prompt_tokens_details") or {}
    if details.get("cached_tokens") is not None:
        rec.cached_tokens = int(details["cached_tokens"])


async def _read_stream(
    resp: aiohttp.ClientResponse, rec: RequestRecord, start: float, keep_text: bool
) -> None:
    """Consume the SSE body; timestamps first, decoding second."""
    prev: float | None = None
    text_chunks = 0
    usage_seen = False
    parts: list[str] = []
    async for line in resp.content:
        now = time.perf_counter()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            break
        try:
            chunk = _decoder.decode(payload)
        except msgspec.DecodeError:
            rec.error, rec.error_detail = "stream", f"bad SSE JSON: {payload[:80]!r}"
            return
        rec.chunks += 1
        if isinstance(chunk, dict) and "error" in chunk:
            rec.error, rec.error_detail = "stream", str(chunk["error"])[:200]
            return
        choices = chunk.get("choices") or []
        text = _chunk_text(choices[0]) if choices else ""
        if text:
            text_chunks += 1
            if prev is None:
                rec.ttft_s = now - start
            else:
                rec.itl_s.append(now - prev)
            prev = now
            if keep_text:
                parts.append(text)
        if chunk.get("usage"):
            usage_seen = True
            _take_usage(rec, chunk["usage"])
    rec.e2e_s = time.perf_counter() - start
    if prev is not None:
        rec.last_token_s = prev - start
    if not usage_seen:
        rec.output_tokens = text_chunks
    rec.text = "".join(parts)
    if prev is None:
        rec.error, rec.error_detail = "empty", "no text-bearing chunk in the stream"


async def _read_json(resp: aiohttp.ClientResponse, rec: RequestRecord, start: float) -> None:
    body = _decoder.decode(await resp.read())
    rec.e2e_s = time.perf_counter() - start
    choices = body.get("choices") or []
    rec.text = _chunk_text(choices[0]) if choices else ""
    _take_usage(rec, body.get("usage"))
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
) -> None:
    """POST `body` to `url` and fill `rec`; never raises except on cancellation (which marks it cancelled)."""
    stream = bool(body.get("stream"))
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, json=body) as resp:
                if resp.status != 200:
                    detail = (await resp.text())[:200]
                    rec.error, rec.error_detail = f"http_{resp.status}", detail.replace("\n", " ")
                    return
                if stream:
                    await _read_stream(resp, rec, start, keep_text)
                else:
                    await _read_json(resp, rec, start)
    except TimeoutError:
        rec.error, rec.error_detail = "timeout", f"no complete response within {timeout_s:g} s"
    except asyncio.CancelledError:
        rec.error, rec.error_detail = "cancelled", "run stopped before the response finished"
        raise
    except aiohttp.ClientConnectorError as err:
        rec.error, rec.error_detail = "connect", str(err)[:200]
    except (aiohttp.ClientError, msgspec.DecodeError, ValueError, AttributeError) as err:
        rec.error, rec.error_detail = "stream", f"{type(err).__name__}: {err}"[:200]
