"""Running a gateway in the foreground: uvloop when available, SIGINT/SIGTERM stop it cleanly.

`eksinfer gateway` and `eksinfer up` both end up here; `up` passes extra start/stop steps (the simulator
subprocess) so one Ctrl-C stops everything in order: gateway first (no new requests), then the engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from eksinfer.gateway.config import GatewayConfig
from eksinfer.gateway.runtime import GatewayRuntime, build_runtime
from eksinfer.lifecycle import stopped_or_orphaned

log = logging.getLogger(__name__)

READY_WAIT_S = 5.0  # how long to wait for the first endpoint's models before printing the banner


def run_event_loop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Runs `main()` on uvloop (faster sockets and timers for a proxy) or the default loop without it."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


async def wait_for_signal() -> None:
    """Returns on the first SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on every platform
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)


async def serve_until_signal(
    config: GatewayConfig,
    on_ready: Callable[[GatewayRuntime], None] | None = None,
    before_start: Callable[[], Awaitable[None]] | None = None,
    after_stop: Callable[[], Awaitable[None]] | None = None,
    parent: int | None = None,
    watch: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Starts a gateway (after `before_start`), serves until a signal (or, for a worker, until its `parent`
    process is gone, or until `watch()` raises: a supervised child died), stops it (then `after_stop`)."""
    try:
        if before_start is not None:
            await before_start()
        runtime = build_runtime(config)
        await runtime.start()
        try:
            await runtime.wait_ready(READY_WAIT_S)
            if on_ready is not None:
                on_ready(runtime)
            await stopped_or_orphaned(wait_for_signal(), parent, watch=watch() if watch is not None else None)
            log.info("stopping")
        finally:
            await runtime.stop()
    finally:
        if after_stop is not None:
            await after_stop()


def _worker(config: GatewayConfig, level: int, parent: int) -> None:
    """Entry point of an extra worker process (spawned, so it starts from a clean interpreter)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        run_event_loop(lambda: serve_until_signal(config, parent=parent))


def run_gateway(config: GatewayConfig, on_ready: Callable[[GatewayRuntime], None] | None = None) -> None:
    """Serves in this process, plus `server.workers - 1` spawned processes on the same port (SO_REUSEPORT:
    the kernel spreads connections). Each worker keeps its own router state, in-flight counts and metrics,
    like independent gateway replicas; all of them subscribe to every engine's KV events, so the precise
    prefix index converges in each one."""
    extra = config.server.workers - 1
    ctx = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    args = (config, level, os.getpid())
    procs = [ctx.Process(target=_worker, args=args, daemon=True) for _ in range(extra)]
    for proc in procs:
        proc.start()
    try:
        run_event_loop(lambda: serve_until_signal(config, on_ready=on_ready))
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=10)
