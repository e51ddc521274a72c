"""`GET /status` (one HTML page, inline CSS and script, no external assets, no build step) and
`GET /status.json` (what the page polls once a second).

Auth: with API keys configured, /status.json answers 401 without a key, like the API (it names endpoint
addresses, which `server.route_headers` keeps from clients by default). The HTML holds no data, so it is
served without a key; its script reads the key from the URL fragment (`/status#key=sk-...`: a fragment
never leaves the browser) and sends it as `Authorization: Bearer`.
"""

from __future__ import annotations

from importlib import resources

import msgspec
from aiohttp import web

from eksinfer.gateway.http import ApiKeys, error_response
from eksinfer.gateway.status.board import StatusBoard


def status_routes(board: StatusBoard, keys: ApiKeys) -> list[web.RouteDef]:
    page = resources.files(__package__).joinpath("status.html").read_bytes()

    async def html(request: web.Request) -> web.Response:
        return web.Response(
            body=page,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store", "Content-Security-Policy": _CSP},
        )

    async def data(request: web.Request) -> web.Response:
        if not keys.check(request.headers):
            return error_response(401, "invalid or missing API key", code="invalid_api_key")
        body = msgspec.json.encode(board.snapshot())
        return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "no-store"})

    return [web.get("/status", html), web.get("/status.json", data)]


# The page loads nothing from elsewhere and talks only to its own origin.
_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"
