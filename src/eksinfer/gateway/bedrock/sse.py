"""Chunks -> server-sent events, and the whole answer of a Bedrock tier as an aiohttp response.

The commit point is the first chunk: `respond` reads it before sending the status line, so any error up to
there (throttling, a 503, a stream that broke before content) propagates to the caller, which may retry or
try another tier; after it, an error ends the stream with an in-band SSE error event and no `[DONE]`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import msgspec
from aiohttp import web

from eksinfer.gateway.bedrock.client import BedrockClient
from eksinfer.gateway.bedrock.errors import BedrockError
from eksinfer.gateway.http import sse_error_event

DONE = b"data: [DONE]\n\n"


def sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + msgspec.json.encode(chunk) + b"\n\n"


async def sse_events(chunks: AsyncIterator[dict[str, Any]]) -> AsyncGenerator[bytes, None]:
    """`data: {chunk}` for each chunk, then `data: [DONE]`. An error before the first chunk is raised;
    after it, the stream ends with an error event."""
    sent = False
    try:
        async for chunk in chunks:
            sent = True
            yield sse(chunk)
    except BedrockError as err:
        if not sent:
            raise
        yield sse_error_event(err.status, str(err), err.code)
        return
    yield DONE


async def respond(
    request: web.Request,
    client: BedrockClient,
    body: dict[str, Any],
    model: str,
    *,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Answers `request` from Bedrock: JSON for a plain request, SSE for `stream: true`. Raises
    BedrockError / RequestRefused only before anything was sent."""
    if not body.get("stream"):
        result = await client.complete(body, model)
        return web.Response(
            body=msgspec.json.encode(result), content_type="application/json", headers=headers
        )
    events = sse_events(client.stream(body, model))
    try:
        first = await anext(events)
    except StopAsyncIteration:  # pragma: no cover - sse_events always ends with [DONE] or raises
        first = DONE
    response = web.StreamResponse(headers=headers)
    response.content_type = "text/event-stream"
    response.headers["Cache-Control"] = "no-cache"
    try:
        await response.prepare(request)
        await response.write(first)
        async for event in events:
            await response.write(event)
    finally:
        await events.aclose()
    return response
