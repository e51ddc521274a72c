"""`build_runtime(config)` wires the gateway: endpoint registry, discovery, scrapers, router, proxy, metrics
and the aiohttp server. Every background task (discovery watch, one scraper per endpoint) is a child of one
`asyncio.TaskGroup` owned by the runtime and cancelled by `stop()`; a task that fails unexpectedly is logged
and restarted after a pause instead of taking the group (and every other task) down.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

import aiohttp
import msgspec
from aiohttp import web

from eksinfer.errors import UsageError
from eksinfer.gateway.config import GatewayConfig
from eksinfer.gateway.discovery import KubernetesWatcher, static_specs
from eksinfer.gateway.endpoints import EndpointRegistry, EndpointSpec
from eksinfer.gateway.http import RETRY_AFTER_S, ApiKeys, add_fallback_route, error_body
from eksinfer.gateway.metrics import GatewayMetrics
from eksinfer.gateway.observe import RequestObserver
from eksinfer.gateway.proxy import Proxy, RouterLike
from eksinfer.gateway.resilience.cascade import Cascade
from eksinfer.gateway.resilience.health import HealthChecker
from eksinfer.gateway.resilience.layer import Resilience
from eksinfer.gateway.resilience.stall import Watched
from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState
from eksinfer.gateway.scrape import Scraper
from eksinfer.gateway.status.page import status_routes
from eksinfer.gateway.upstream import UpstreamPool
from eksinfer.guarded_http import GuardedRunner, Guards

log = logging.getLogger(__name__)

RESTART_PAUSE_S = 1.0
DEFAULT_PRESET = "kv-aware"


class RuntimeRouter(RouterLike, Protocol):
    """The router's lifecycle and endpoint hooks, on top of what the proxy calls per request."""

    def start(self) -> Any: ...

    async def stop(self) -> None: ...

    def endpoint_added(self, state: EndpointState, kv_events: str | None) -> None: ...

    def endpoint_removed(self, endpoint_id: EndpointId) -> None: ...

    def stats(self) -> Mapping[str, Any]: ...


def make_router(config: GatewayConfig) -> RuntimeRouter:
    """The router the routing section asks for."""
    from eksinfer.gateway.config import validate_routing
    from eksinfer.gateway.routing import Router

    router: RuntimeRouter = Router(validate_routing(config.routing))
    return router


class GatewayRuntime:
    """One gateway: `await start()` serves, `await stop()` cancels every task and closes every connection."""

    def __init__(
        self,
        config: GatewayConfig,
        router: RuntimeRouter,
        resilience: Resilience | None = None,
        *,
        tracer_provider: Any = None,
    ) -> None:
        self.config = config
        self.router = router
        self.registry = EndpointRegistry()
        self.preset = str(getattr(router, "preset", None) or config.routing.get("preset", DEFAULT_PRESET))
        self.metrics = GatewayMetrics(self.registry.all, self._router_stats)
        self.keys = ApiKeys(config.auth.load_keys())
        self.resilience = resilience or Resilience(config.resilience, Cascade(config.pools, config.models))
        self.metrics.registry.register(self.resilience.collector(self.registry.all, self.registry.draining))
        cascade = self.resilience.cascade
        self.metrics.describe_cascades(
            {m: [(t.name, t.kind) for t in cascade.plan(m).tiers] for m in config.models}
        )
        self.observer = RequestObserver(
            config.observability,
            self.registry.all,
            lambda: self.proxy.inflight if self.proxy is not None else 0,
            default_preset=self.preset,
            tracer_provider=tracer_provider,
        )
        self._scrape_tasks: dict[EndpointId, asyncio.Task[None]] = {}
        self._check_tasks: dict[EndpointId, asyncio.Task[None]] = {}
        self._checker: HealthChecker | None = None
        self._group: asyncio.TaskGroup | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._runner: GuardedRunner | None = None
        self._upstream: UpstreamPool | None = None
        self._scrape_session: aiohttp.ClientSession | None = None
        self._scraper: Scraper | None = None
        self.proxy: Proxy | None = None
        self.port: int | None = None
        self.registry.subscribe(self)

    def _router_stats(self) -> Mapping[str, Any]:
        try:
            return self.router.stats()
        except Exception:  # metrics must render even if the router's statistics fail
            log.exception("router.stats() failed")
            return {}

    # --- endpoint listener ------------------------------------------------------------------------------
    def endpoint_added(self, state: EndpointState, spec: EndpointSpec) -> None:
        self.router.endpoint_added(state, spec.kv_events)
        self.resilience.detector.joined(state)  # slow start, when it joins a pool already serving
        if self._group is not None and self._scraper is not None:
            scraper = self._scraper
            task = self._group.create_task(
                _guarded(f"scraper {state.id}", lambda: scraper.run(state, fetch_models=not spec.models))
            )
            self._scrape_tasks[state.id] = task
            checker = self._checker
            if checker is not None:
                self._check_tasks[state.id] = self._group.create_task(
                    _guarded(f"health checks {state.id}", lambda: checker.run(state))
                )

    def endpoint_removed(self, state: EndpointState) -> None:
        for tasks in (self._scrape_tasks, self._check_tasks):
            task = tasks.pop(state.id, None)
            if task is not None:
                task.cancel()
        self.resilience.detector.forget(state.id)
        self.resilience.cascade.forget(state.id)
        self.router.endpoint_removed(state.id)

    def _stalled(self, endpoint_id: str, waiting: Iterable[Watched]) -> None:
        """The watchdog found an endpoint stalled: eject it, and retry its waiting requests elsewhere now."""
        state = self.registry.get(EndpointId(endpoint_id))
        if state is not None:
            self.resilience.detector.eject(state, self.registry.pool_members(state.pool))
        now = asyncio.get_running_loop().time()
        for watched in waiting:
            watched.expire(now)

    async def _warm_managed(self) -> None:
        """Builds the managed pools' clients once the first scrapes have landed (or after 5 s): building a
        botocore client takes about a second of CPU, which would slow those first scrapes."""
        for _ in range(50):
            if self.registry.ready():
                break
            await asyncio.sleep(0.1)
        await self.resilience.warm()

    def _engine_count(self, endpoint_id: str) -> tuple[int, float] | None:
        """Requests the endpoint's engine counts (running + waiting) at its last scrape, and that scrape's
        age; the stall watchdog compares it with the gateway's own count (resilience/stall.py)."""
        state = self.registry.get(EndpointId(endpoint_id))
        if state is None or state.scraped_at is None or state.num_running is None:
            return None
        count = state.num_running + (state.num_waiting or 0)
        return count, time.monotonic() - state.scraped_at

    def _health_changed(self, state: EndpointState, healthy: bool) -> None:
        """A scraper's verdict changed; an endpoint that comes back starts slowly."""
        self.registry.health_changed(state, healthy)
        if healthy:
            self.resilience.detector.returned(state)

    # --- lifecycle ----------------------------------------------------------------------------------------
    def build_app(self) -> web.Application:
        server = self.config.server
        # Bodies are relayed byte for byte: the engine is not offered compression (no Accept-Encoding).
        self._upstream = UpstreamPool(server.connect_timeout_s, server.engine_keepalive_s)
        pd = None
        if self.config.disaggregation:
            from eksinfer.gateway.pd.coordinator import PdCoordinator

            pd = PdCoordinator(
                self.config.disaggregation, self.registry, self.router, self._upstream, self.metrics.registry
            )
        self.proxy = Proxy(
            server,
            self.registry,
            self.router,
            self.metrics,
            self._upstream,
            self.keys,
            self.preset,
            self.resilience,
            observer=self.observer,
            pd=pd,
        )
        app = web.Application(client_max_size=server.max_body_bytes)
        app.add_routes(self.proxy.routes())
        if self.observer.board is not None:
            app.add_routes(status_routes(self.observer.board, self.keys))
        app.add_routes([web.get("/health", self._health), web.get("/ready", self._ready)])
        app.add_routes([web.get("/metrics", self._metrics)])
        add_fallback_route(app)
        return app

    async def start(self) -> None:
        """Starts the router, discovery and scrapers, then listens; returns once the port is bound."""
        for i, kube in enumerate(self.config.endpoints.kubernetes):
            # ConfigError now, not a retry loop later
            KubernetesWatcher(kube, self.registry, f"endpoints.kubernetes.{i}").api_url()
        self.observer.start()
        started = self.router.start()
        if inspect.isawaitable(started):
            await started
        self._scrape_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        self._scraper = Scraper(
            self._scrape_session,
            self.config.scrape,
            self.registry.set_models,
            self._health_changed,
            on_metrics=self.resilience.cascade.observe_scrape,
        )
        checks = self.config.resilience.health_checks
        if checks.enabled:
            self._checker = HealthChecker(
                self._scrape_session,
                checks,
                self.resilience.detector,
                on_back=lambda state: self.resilience.breaker(state.pool).try_now(),
            )
        ready = asyncio.Event()
        self._supervisor = asyncio.create_task(self._supervise(ready))
        await ready.wait()
        app = self.build_app()
        server = self.config.server
        guards = Guards(
            error_body=lambda status, message, code: error_body(status, message, code=code),
            idle_timeout_s=server.idle_timeout_s,
            max_connections=server.max_connections,
            retry_after_s=RETRY_AFTER_S,
        )
        self._runner = GuardedRunner(
            app,
            guards,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=server.drain_timeout_s,  # in-flight streams finish on SIGTERM
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, server.host, server.port, backlog=1024, reuse_port=server.workers > 1 or None
        )
        try:
            await site.start()
        except OSError as err:
            await self.stop()
            msg = f"cannot listen on {server.host}:{server.port}: {err.strerror or err}"
            raise UsageError(msg, field="server.port") from None
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.server.port
        log.info("gateway listening on %s:%s (preset %s)", self.config.server.host, self.port, self.preset)

    async def _supervise(self, ready: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            for spec in static_specs(self.config.endpoints):
                self.registry.add(spec)
            for i, kube in enumerate(self.config.endpoints.kubernetes):
                watcher = KubernetesWatcher(kube, self.registry, f"endpoints.kubernetes.{i}")
                group.create_task(_guarded(f"kubernetes discovery ({kube.label_selector})", watcher.run))
            group.create_task(_guarded("managed clients", self._warm_managed))
            stalls = self.resilience.stalls
            if stalls.stall_after_s > 0:
                group.create_task(
                    _guarded("stall watchdog", lambda: stalls.run(self._stalled, self._engine_count))
                )
            ready.set()
            await asyncio.Event().wait()  # until cancelled by stop()

    async def stop(self) -> None:
        """Stops listening, cancels every background task, stops the router and closes client sessions."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
            self._group = None
        await self.router.stop()
        await self.resilience.close()
        if self._upstream is not None:
            await self._upstream.close()
        if self._scrape_session is not None:
            await self._scrape_session.close()

    async def wait_ready(self, timeout_s: float) -> bool:
        """Waits until some endpoint is healthy and has reported its models (or the timeout passes)."""
        for _ in range(max(1, int(timeout_s / 0.02))):
            if self.registry.ready():
                return True
            await asyncio.sleep(0.02)
        return self.registry.ready()

    async def __aenter__(self) -> GatewayRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- small handlers ---------------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready(self, request: web.Request) -> web.Response:
        states = self.registry.all()
        body = {
            "ready": self.registry.ready(),
            "endpoints": len(states),
            "healthy": sum(1 for s in states if s.healthy),
            "models": sorted({m for s in states for m in s.models}),
        }
        return web.Response(
            status=200 if body["ready"] else 503,
            body=msgspec.json.encode(body),
            content_type="application/json",
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")


async def _guarded(name: str, factory: Callable[[], Awaitable[None]]) -> None:
    """Runs a background loop; logs and restarts it if it fails, so one bug does not stop the others."""
    while True:
        try:
            await factory()
            return
        except Exception:
            log.exception("%s failed; restarting in %.1f s", name, RESTART_PAUSE_S)
            await asyncio.sleep(RESTART_PAUSE_S)


def build_runtime(
    config: GatewayConfig, router: RuntimeRouter | None = None, resilience: Resilience | None = None
) -> GatewayRuntime:
    """Wires a gateway from its config; `router` and `resilience` replace the configured ones (tests,
    embedding: a resilience layer with injected clock, random generator or managed-API clients)."""
    return GatewayRuntime(config, router if router is not None else make_router(config), resilience)
