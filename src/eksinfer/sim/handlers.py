"""The simulator's `/v1/embeddings` (pooling runner) and `/v1/responses` (generate runner) handlers.

They reuse the server's body reading, fault injection and engine submission; the wire shapes live in
`pooling` and `responses`. Embedding inputs are prefilled by the engine with one output step (vLLM's
pooling pass is a prefill), so they take simulated GPU time and queue behind other work.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TYPE_CHECKING

from aiohttp import web

from eksinfer.sim import pooling
from eksinfer.sim import protocol as p
from eksinfer.sim import responses as r
from eksinfer.sim.scheduler import SimRequest

if TYPE_CHECKING:
    from eksinfer.sim.server import SimServer

_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


async def _finish_all(server: SimServer, submit: list[tuple[list[int], int]]) -> list[SimRequest]:
    """Runs (prompt ids, max tokens) requests to the end; aborts them if the client goes away."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    reqs: list[SimRequest] = []

    def on_tokens(_: SimRequest) -> None:
        if all(q.finish_reason is not None for q in reqs) and not done.done():
            done.set_result(None)

    for ids, max_tokens in submit:
        reqs.append(server.engine.add_request(ids, max_tokens=max_tokens, on_tokens=on_tokens))
    try:
        await done
    except asyncio.CancelledError:
        for req in reqs:
            server.engine.abort(req)
        raise
    if any(req.finish_reason == "error" for req in reqs):
        raise p.ApiError(500, "the engine stopped before the request finished", type_="InternalServerError")
    return reqs


async def embeddings(server: SimServer, request: web.Request) -> web.Response:
    raw, _ = await server.read(request)
    body = p.parse_body(raw)
    model, _lora = server.ctx.resolve(body)
    fmt = pooling.check_options(body)
    ids = pooling.inputs(body, server.ctx)
    await server.faults()
    await _finish_all(server, [(x, 1) for x in ids])
    size = server.hidden_size
    data = [pooling.encode(pooling.vector(x, size), fmt) for x in ids]
    rid = f"embd-{secrets.token_hex(8)}"
    out = pooling.response(rid, int(time.time()), model, data, sum(len(x) for x in ids))
    return web.Response(body=p.dumps(out), content_type="application/json")


async def responses(server: SimServer, request: web.Request) -> web.StreamResponse:
    raw, _ = await server.read(request)
    body = p.parse_body(raw)
    params, echo = r.parse(body, server.ctx)
    await server.faults()
    build = r.ResponseBuilder(params.model, int(time.time()), echo)
    if params.stream:
        return await _stream(server, request, params, build)
    [req] = await _finish_all(server, [(params.prompt_ids, params.max_tokens)])
    final = _final(server, build, req)
    return web.Response(body=p.dumps(final), content_type="application/json")


def _final(server: SimServer, build: r.ResponseBuilder, req: SimRequest) -> dict[str, object]:
    cached = max(req.num_cached_tokens, 0)
    text = server.text_of(req.output_ids)
    return build.body(text, req.finish_reason, req.num_prompt_tokens, req.num_output_tokens, cached)


async def _stream(
    server: SimServer, request: web.Request, params: p.GenerateParams, build: r.ResponseBuilder
) -> web.StreamResponse:
    wake = asyncio.Event()
    req = server.engine.add_request(
        params.prompt_ids, max_tokens=params.max_tokens, on_tokens=lambda _: wake.set()
    )
    response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    tok, eos, sent = server.engine.tokenizer, server.engine.tokenizer.eos_token_id, 0
    try:
        await response.prepare(request)
        await response.write(b"".join(build.opening()))
        while True:
            await wake.wait()
            wake.clear()
            if req.finish_reason == "error":
                err = p.ApiError(
                    500, "the engine stopped before the request finished", type_="InternalServerError"
                )
                await response.write(b"event: error\ndata: " + err.body() + b"\n\n")
                break
            out = req.output_ids
            parts = [build.delta(tok.decode([t])) for t in out[sent:] if t != eos]
            sent = len(out)
            if req.finish_reason is not None:
                parts += build.closing(_final(server, build, req))
            if parts:
                await response.write(b"".join(parts))
            if req.finish_reason is not None:
                break
        await response.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        server.engine.abort(req)
        raise
    return response
