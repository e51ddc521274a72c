"""Run N simulated engines in one process: the library entry other parts' tests use, and `eksinfer sim`.

    cluster = await start_cluster(SimOptions(port=0, time_scale=0), replicas=4)
    cluster.urls            # ["http://127.0.0.1:41001", ...]  (port + i, or free ports when port=0)
    cluster.event_endpoints # ["tcp://127.0.0.1:5557", "tcp://127.0.0.1:5558", ...] when events are on
    await cluster.stop()

Replica i listens on `port + i` and publishes KV events on the configured endpoint's port + i (vLLM's
data-parallel offset), with `data_parallel_rank = i`. The topic may use `{host}`, `{port}`, `{model}` and
`{rank}` placeholders (e.g. `kv@{host}:{port}@{model}`), filled per replica. The performance model and the
tokenizer are built once and shared (both are read-only).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from aiohttp import web

from eksinfer.errors import ConfigError
from eksinfer.guarded_http import GuardedRunner
from eksinfer.sim.config import SimOptions, build_perf, resolve_engine_sizing
from eksinfer.sim.engine import Engine
from eksinfer.sim.server import SimServer, guards
from eksinfer.tokenize import Tokenizer, load_tokenizer

if TYPE_CHECKING:
    from eksinfer.perf import EnginePerf

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Replica:
    """One engine and its HTTP listener."""

    engine: Engine
    runner: GuardedRunner
    host: str
    port: int
    crashed: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def event_endpoint(self) -> str | None:
        """Where a subscriber connects (wildcard hosts become 127.0.0.1)."""
        pub = self.engine.publisher
        if pub is None:
            return None
        return pub.endpoint.replace("*", "127.0.0.1", 1)

    @property
    def replay_endpoint(self) -> str | None:
        pub = self.engine.publisher
        if pub is None or pub.replay_endpoint is None:
            return None
        return pub.replay_endpoint.replace("*", "127.0.0.1", 1)

    @property
    def side_channel(self) -> str | None:
        """host:port of the NIXL side channel (P/D engines only)."""
        nixl = self.engine.nixl
        return None if nixl is None else f"{nixl.side_channel.host}:{nixl.port}"

    async def stop(self) -> None:
        await self.engine.stop()  # first, so in-flight handlers complete (500) instead of holding shutdown
        await self.runner.cleanup()

    async def kill(self) -> None:
        """Fault injection: die like a killed process or a lost node, mid-stream included: every open
        connection is reset (no error event, no end of stream), then the listener and the engine stop."""
        self.crashed = True
        server = self.runner.server
        for handler in server.connections if server is not None else ():
            if handler.transport is not None:
                handler.transport.abort()
        await self.stop()

    def crash(self) -> None:
        """Fault injection: stop serving and publishing, as if the process died."""
        if not self.crashed:
            self.crashed = True
            asyncio.get_running_loop().create_task(self.stop())


@dataclass(slots=True)
class SimCluster:
    """Handle on running replicas; `stop()` shuts them all down."""

    replicas: list[Replica] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    @property
    def ports(self) -> list[int]:
        return [r.port for r in self.replicas]

    @property
    def event_endpoints(self) -> list[str | None]:
        return [r.event_endpoint for r in self.replicas]

    @property
    def engines(self) -> list[Engine]:
        return [r.engine for r in self.replicas]

    async def stop(self) -> None:
        for replica in self.replicas:
            if not replica.crashed:
                replica.crashed = True
                await replica.stop()


def _topic(template: str, *, host: str, port: int, model: str, rank: int) -> str:
    return (template.replace("{host}", host).replace("{port}", str(port)).replace("{model}", model)).replace(
        "{rank}", str(rank)
    )


def _replica_options(options: SimOptions, rank: int, replicas: int) -> SimOptions:
    """P/D: replica `rank`'s engine id (`<id>_dp<rank>`), role (the first `prefill_replicas` produce KV,
    the rest consume it) and side-channel port (base + rank, as vLLM adds the data-parallel rank)."""
    if options.kv_transfer is None:
        return options
    role = None
    if options.prefill_replicas:
        role = "kv_producer" if rank < options.prefill_replicas else "kv_consumer"
    port = options.nixl_side_channel_port + rank if options.nixl_side_channel_port else 0
    return replace(
        options,
        kv_transfer=options.kv_transfer.for_replica(rank, replicas, role),
        nixl_side_channel_port=port,
    )


def role_of(engine: Engine) -> str | None:
    """ "prefill" / "decode" for split pools, "both" for kv_both engines, None without P/D."""
    kv = engine.options.kv_transfer
    if kv is None:
        return None
    return {"kv_producer": "prefill", "kv_consumer": "decode"}.get(kv.kv_role, "both")


async def _start_replica(
    options: SimOptions, rank: int, tokenizer: Tokenizer, perf: EnginePerf, replicas: int = 1
) -> Replica:
    options = _replica_options(options, rank, replicas)
    sizing = resolve_engine_sizing(options, perf)
    port = options.port + rank if options.port else 0
    engine_holder: list[Replica] = []
    engine = Engine(options, rank=rank, tokenizer=tokenizer, perf=perf, sizing=sizing)
    server = SimServer(engine, on_crash=lambda: engine_holder[0].crash())
    runner = GuardedRunner(
        server.app(),
        guards(options),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=1.0,
        handler_cancellation=True,
    )
    await runner.setup()
    site = web.TCPSite(runner, options.host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {options.host}:{port}: {err.strerror}", field="--port") from err
    bound = runner.addresses[0][1] if runner.addresses else port
    # The topic may name the HTTP port, which is known only now (port 0 binds a free one).
    if engine.publisher is not None:
        engine.publisher.topic = _topic(
            options.kv_events.topic, host=options.host, port=bound, model=engine.model_name, rank=rank
        ).encode()
    try:
        await engine.start()
    except ConfigError:
        await runner.cleanup()
        raise
    replica = Replica(engine=engine, runner=runner, host=options.host, port=bound)
    engine_holder.append(replica)
    return replica


MAX_REPLICAS = 256


async def start_cluster(
    options: SimOptions, replicas: int = 1, *, tokenizer: Tokenizer | None = None
) -> SimCluster:
    """Start `replicas` engines on the running loop; raises EksinferError subclasses on bad options."""
    options.validate()
    if replicas < 1:
        raise ConfigError("must be >= 1", field="--replicas")
    if replicas > MAX_REPLICAS:  # each engine is a server, a block pool and a scheduler task in this process
        msg = f"at most {MAX_REPLICAS} engines per process, got {replicas}; run several `eksinfer sim`"
        raise ConfigError(msg, field="--replicas")
    if options.port and options.port + replicas - 1 > 65535:  # engine i listens on port + i
        last = options.port + replicas - 1
        raise ConfigError(f"engine {replicas - 1} would listen on port {last} > 65535", field="--replicas")
    if options.prefill_replicas >= replicas:
        msg = f"{options.prefill_replicas} prefill replicas leave no decode replica of {replicas}"
        raise ConfigError(msg, field="--prefill-replicas")
    if options.kv_transfer is not None and options.nixl_side_channel_port + replicas - 1 > 65535:
        raise ConfigError(
            "the last replica's side-channel port would pass 65535", field="--nixl-side-channel-port"
        )
    if tokenizer is None:
        tokenizer = await asyncio.to_thread(load_tokenizer, options.tokenizer)
    perf = await asyncio.to_thread(build_perf, options)
    cluster = SimCluster()
    try:
        for rank in range(replicas):
            cluster.replicas.append(await _start_replica(options, rank, tokenizer, perf, replicas))
    except BaseException:
        await cluster.stop()
        raise
    log.info("started %d simulated engine(s): %s", replicas, ", ".join(cluster.urls))
    return cluster
