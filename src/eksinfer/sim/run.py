"""Run simulated engines until SIGINT/SIGTERM (the `eksinfer sim` process), on uvloop where available."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from eksinfer.lifecycle import parent_from_env, stopped_or_orphaned
from eksinfer.sim.cluster import role_of, start_cluster
from eksinfer.sim.config import SimOptions

log = logging.getLogger(__name__)


async def _serve(options: SimOptions, replicas: int) -> None:
    cluster = await start_cluster(options, replicas)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    engine = cluster.engines[0]
    for replica in cluster.replicas:
        events = f", KV events {replica.event_endpoint}" if replica.event_endpoint else ""
        role = role_of(replica.engine)
        pd = f", {role} role, NIXL side channel {replica.side_channel}" if role else ""
        print(f"engine {replica.engine.rank}: {replica.url}{events}{pd}", flush=True)
    print(
        f"simulating {options.model} on {options.gpu}: {engine.sizing.num_gpu_blocks} KV blocks of "
        f"{options.block_size}, max_model_len {engine.sizing.max_model_len}, time scale {options.time_scale}",
        flush=True,
    )
    try:  # started by `eksinfer up`: also stop if it dies without stopping us
        await stopped_or_orphaned(stop.wait(), parent_from_env())
    finally:
        await cluster.stop()


def serve(options: SimOptions, replicas: int, *, log_level: str = "info") -> None:
    """Blocking entry point; EksinferError from start-up propagates to the CLI."""
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(_serve(options, replicas))
        return
    uvloop.run(_serve(options, replicas))
