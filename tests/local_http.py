"""One way for tests to serve an aiohttp app on a free loopback port (fake engines, fake API servers)."""

from __future__ import annotations

from typing import ClassVar, Self

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


class FakeEngineServer:
    """What the fake vLLM engines share: their four routes on a free port, start and stop, and the model
    card. A subclass (a dataclass with `model`, `runner` and `url` fields) writes `_health`, `_metrics` and
    `_generate`."""

    model: str
    runner: web.AppRunner | None
    url: str
    max_model_len: ClassVar[int] = 2048

    async def start(self) -> Self:
        app = web.Application()
        app.add_routes(
            [
                web.get("/v1/models", self._models),
                web.get("/metrics", self._metrics),
                web.get("/health", self._health),
                web.post("/v1/completions", self._generate),
                web.post("/v1/chat/completions", self._generate),
            ]
        )
        self.runner, self.url = await serve(app)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _models(self, request: web.Request) -> web.Response:
        card = {"id": self.model, "object": "model", "owned_by": "vllm", "max_model_len": self.max_model_len}
        return web.json_response({"object": "list", "data": [card]})

    async def _health(self, request: web.Request) -> web.Response:
        raise NotImplementedError

    async def _metrics(self, request: web.Request) -> web.Response:
        raise NotImplementedError

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError
