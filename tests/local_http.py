"""One way for tests to serve an aiohttp app on a free loopback port (fake engines, fake API servers)."""

from __future__ import annotations

from aiohttp import web


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Starts `app` on 127.0.0.1 with a port the kernel picks; returns its runner (to clean up) and base URL.
    Handlers are cancelled when their client goes away, as the gateway's and vLLM's are."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"
