"""The side channel between simulated engines, standing in for NIXL's.

vLLM's NixlConnector exchanges agent metadata over a ZMQ socket on VLLM_NIXL_SIDE_CHANNEL_HOST:PORT (the
`remote_host` / `remote_port` a prefill returns), then the decode engine READs the blocks with one-sided RDMA
and sends a NIXL notification that lets the prefill engine free them; while it waits, it renews the
prefill's lease with heartbeats. The simulator keeps the same conversation over small HTTP/JSON calls on that
host and port, served by the prefill engine:

    GET  /handshake                               -> {engine_id, block_size, tp_size, kv_bytes_per_token}
    POST /read      {request_id, block_ids}       -> {bytes}; 404 when the blocks are no longer pinned
    POST /notify    {request_id}                  -> 200 and the blocks are freed; 404 when already expired
    POST /heartbeat {request_ids}                 -> {extended}

`/read` stands for the RDMA read (it checks the blocks are still there; the decode side then waits the
modelled transfer time); the bytes themselves are not sent.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from eksinfer.sim.pd.connector import NixlSim


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _body(request: web.Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def side_channel_app(nixl: NixlSim) -> web.Application:
    """The routes one engine serves on its side-channel port."""

    async def handshake(request: web.Request) -> web.Response:
        return web.json_response(nixl.handshake_info())

    async def read(request: web.Request) -> web.Response:
        body = await _body(request)
        if body is None or not isinstance(body.get("request_id"), str):
            return _bad("request_id (a string) is required")
        blocks = body.get("block_ids")
        if not isinstance(blocks, list) or not all(isinstance(b, int) for b in blocks):
            return _bad("block_ids must be a list of block ids")
        nbytes = nixl.serve_read(body["request_id"], blocks)
        if nbytes is None:
            return _bad(f"request {body['request_id']} has no pinned blocks (expired or unknown)", 404)
        return web.json_response({"bytes": nbytes})

    async def notify(request: web.Request) -> web.Response:
        body = await _body(request)
        if body is None or not isinstance(body.get("request_id"), str):
            return _bad("request_id (a string) is required")
        if not nixl.serve_notify(body["request_id"]):
            return _bad(f"request {body['request_id']} is not pinned (expired or unknown)", 404)
        return web.json_response({"released": True})

    async def heartbeat(request: web.Request) -> web.Response:
        body = await _body(request)
        ids = None if body is None else body.get("request_ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return _bad("request_ids must be a list of strings")
        return web.json_response({"extended": nixl.serve_heartbeat(ids)})

    app = web.Application(client_max_size=1024**2)
    app.router.add_get("/handshake", handshake)
    app.router.add_post("/read", read)
    app.router.add_post("/notify", notify)
    app.router.add_post("/heartbeat", heartbeat)
    return app
