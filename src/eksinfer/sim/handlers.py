"""The simulator's pooling handlers (`/v1/embeddings`, `/score`, `/rerank`) and `/v1/responses`.

They reuse the server's body reading, fault injection and engine submission; the wire shapes live in
`pooling` and `responses`. Embedding inputs are prefilled by the engine with one output step (vLLM's
pooling pass is a prefill), so they take simulated GPU time and queue behind other work.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from eksinfer.sim import pooling, scoring
from eksinfer.sim import protocol as p
from eksinfer.sim import responses as r
from eksinfer.sim.scheduler import SimRequest
from eksinfer.sim.toolcalls import ToolDeltas, message_parts

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


async def _scored(server: SimServer, request: web.Request, *, rerank: bool) -> web.Response:
    """Score or rerank: every input is prefilled once (vLLM pools each input: queries once, then the
    documents; a cross-encoder's pairs cost the same tokens here), then scored."""
    raw, _ = await server.read(request)
    body = p.parse_body(raw)
    parsed = scoring.parse_rerank(body, server.ctx) if rerank else scoring.parse_score(body, server.ctx)
    await server.faults()
    await _finish_all(server, [(x, 1) for x in parsed.inputs])
    cross = server.options.convert == "classify"
    values = scoring.scores(parsed, hidden_size=server.hidden_size, cross_encoder=cross)
    rid = f"score-{secrets.token_hex(8)}"  # vLLM 0.32 names rerank answers score-... too
    if rerank:
        out = scoring.rerank_response(rid, parsed, values)
    else:
        out = scoring.score_response(rid, int(time.time()), parsed, values)
    return web.Response(body=p.dumps(out), content_type="application/json")


async def score(server: SimServer, request: web.Request) -> web.Response:
    return await _scored(server, request, rerank=False)


async def rerank(server: SimServer, request: web.Request) -> web.Response:
    return await _scored(server, request, rerank=True)


async def responses(server: SimServer, request: web.Request) -> web.StreamResponse:
    raw, _ = await server.read(request)
    body = p.parse_body(raw)
    previous = None
    prev_id = body.get("previous_response_id")
    if prev_id is not None:
        previous = server.stored_responses.get(str(prev_id))
        if previous is None:  # also every id when the store is off: vLLM stores nothing then
            raise r.not_found(str(prev_id))
    params, echo, messages = r.parse(body, server.ctx, previous)
    store = server.options.enable_responses_store and body.get("store", True) is not False
    if echo["background"]:
        r.check_background(body, server.options.enable_responses_store)
    await server.faults()
    build = r.ResponseBuilder(params.model, int(time.time()), echo)
    if echo["background"]:
        return _background(server, params, build, messages)
    if params.stream:
        return await _stream(server, request, params, build, messages if store else None)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_tokens(req: SimRequest) -> None:
        if req.finish_reason is not None and not done.done():
            done.set_result(None)

    req = server.submit(params, on_tokens, 0)
    try:
        await done
    except asyncio.CancelledError:
        server.engine.abort(req)
        raise
    if req.finish_reason == "error":
        raise p.ApiError(500, "the engine stopped before the request finished", type_="InternalServerError")
    final = _final(server, build, req, params)
    if store:
        server.stored_responses[build.id] = r.Stored(final, messages)
    return web.Response(body=p.dumps(final), content_type="application/json")


def _background(
    server: SimServer, params: p.GenerateParams, build: r.ResponseBuilder, messages: list[dict[str, Any]]
) -> web.Response:
    """`background: true`: answered at once with the stored, queued response; generation goes on, and its
    end replaces the stored response unless it was cancelled first (as vLLM 0.32's serving_responses)."""
    queued = build.queued()
    server.stored_responses[build.id] = r.Stored(queued, messages)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_tokens(req: SimRequest) -> None:
        if req.finish_reason is not None and not done.done():
            done.set_result(None)

    req = server.submit(params, on_tokens, 0)

    async def finish() -> None:
        try:
            await done
        finally:
            server.background.pop(build.id, None)
        stored = server.stored_responses.get(build.id)
        if stored is not None and stored.response["status"] != "cancelled":
            if req.finish_reason == "error":
                stored.response["status"] = "failed"
            else:
                final = _final(server, build, req, params)
                server.stored_responses[build.id] = r.Stored(final, messages)

    server.background[build.id] = (asyncio.create_task(finish()), req)
    return web.Response(body=p.dumps(queued), content_type="application/json")


async def get_response(server: SimServer, request: web.Request) -> web.Response:
    """`GET /v1/responses/{id}`: a stored response as it was answered; vLLM's 404 otherwise."""
    response_id = request.match_info["response_id"]
    stored = server.stored_responses.get(response_id)
    if stored is None:
        raise r.not_found(response_id)
    return web.Response(body=p.dumps(stored.response), content_type="application/json")


async def cancel_response(server: SimServer, request: web.Request) -> web.Response:
    """`POST /v1/responses/{id}/cancel`: a background response still queued is cancelled (its generation
    aborted) and returned with `status: "cancelled"`; any other stored response gets vLLM 0.32's 400, unknown
    ids its 404."""
    response_id = request.match_info["response_id"]
    stored = server.stored_responses.get(response_id)
    if stored is None:
        raise r.not_found(response_id)
    if stored.response["status"] not in ("queued", "in_progress"):
        raise p.ApiError(
            400, "Cannot cancel a synchronous response.", type_="invalid_request_error", param="response_id"
        )
    stored.response["status"] = "cancelled"
    running = server.background.pop(response_id, None)
    if running is not None:
        task, req = running
        server.engine.abort(req)
        task.cancel()
    return web.Response(body=p.dumps(stored.response), content_type="application/json")


def _final(
    server: SimServer,
    build: r.ResponseBuilder,
    req: SimRequest,
    params: p.GenerateParams,
) -> dict[str, Any]:
    """The finished response. With --reasoning-parser the whole answer's first tokens are a reasoning item
    (as vLLM's), streamed or not."""
    cached = max(req.num_cached_tokens, 0)
    split = server.reasoning_tokens(params)
    ids = [t for t in req.output_ids if t != server.engine.tokenizer.eos_token_id]
    thought, text = server.text_of(ids[:split]), server.text_of(ids[split:])
    _, calls, _ = message_parts(params.output, text, req.finish_reason)
    return build.body(
        text,
        req.finish_reason,
        req.num_prompt_tokens,
        req.num_output_tokens,
        cached,
        calls,
        reasoning=thought or None,
        reasoning_tokens=min(split, len(ids)),
    )


async def _stream(
    server: SimServer,
    request: web.Request,
    params: p.GenerateParams,
    build: r.ResponseBuilder,
    store_messages: list[dict[str, Any]] | None,
) -> web.StreamResponse:
    wake = asyncio.Event()
    req = server.submit(params, lambda _: wake.set(), 0)
    response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    tok, eos, sent = server.engine.tokenizer, server.engine.tokenizer.eos_token_id, 0
    tools = ToolDeltas(params.output, tok.decode) if params.output.calls else None
    split = server.reasoning_tokens(params) if tools is None else 0  # leading tokens streamed as reasoning
    thinking, said = split > 0, 0  # the reasoning item is open; non-EOS tokens streamed so far
    try:
        await response.prepare(request)
        await response.write(b"".join(build.opening(text=tools is None, reasoning=thinking)))
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
            if tools is None:
                parts = []
                for t in (t for t in out[sent:] if t != eos):
                    if said < split:
                        parts.append(build.reasoning_delta(tok.decode([t])))
                    else:
                        if thinking:  # the first answer token ends the thinking: the message opens
                            thought = server.text_of([t for t in out if t != eos][:split])
                            parts += build.reasoning_closing(thought) + build.message_opening()
                            thinking = False
                        parts.append(build.delta(tok.decode([t])))
                    said += 1
            else:
                parts = []
                for i in range(sent, len(out)):
                    for delta in tools.advance([t for t in out[: i + 1] if t != eos]):
                        fn = delta["function"]
                        if "id" in delta:
                            parts.append(build.call_opened(delta["index"], delta["id"], fn["name"]))
                        else:
                            parts.append(build.call_delta(delta["index"], fn["arguments"]))
            sent = len(out)
            if req.finish_reason is not None:
                final = _final(server, build, req, params)
                if store_messages is not None:
                    server.stored_responses[build.id] = r.Stored(final, store_messages)
                if final["output"] and final["output"][0]["type"] == "function_call":
                    parts += build.closing_calls(final)
                elif thinking:  # it stopped while thinking: the reasoning item, and no message (as vLLM)
                    thought = server.text_of([t for t in req.output_ids if t != eos])
                    parts += build.reasoning_closing(thought) + build.closing(final, message=False)
                else:  # text; a scripted call cut short by max_output_tokens is text too, as in vLLM
                    parts += (build.message_opening() if tools is not None else []) + build.closing(final)
            if parts:
                await response.write(b"".join(parts))
            if req.finish_reason is not None:
                break
        await response.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        server.engine.abort(req)
        raise
    return response
