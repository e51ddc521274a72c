"""A simulated vLLM NixlConnector: one per engine started with --kv-transfer-config.

Prefill side (`do_remote_decode`): when the request finishes, its blocks are pinned (sim/pd/pinned.py) and
the response's `kv_transfer_params` say where to pull them (sim/pd/params.py). The side channel
(sim/pd/side_channel.py) answers handshakes, reads, notifications and heartbeats; leases that run out are
reaped and counted.

Decode side (`do_remote_prefill`): from arrival until its KV is in, the request's prefill lease is renewed
by heartbeats. At admission the scheduler allocates the whole prompt and calls `start_load`: the engine
handshakes with the prefill engine (cached per host:port), asks it to read the blocks its own prefix cache
lacks, waits the modelled transfer time (bytes / link bandwidth, x the engine's time scale), notifies the
prefill engine (which frees its copy) and hands the request back to the scheduler. A failed handshake, read
or engine-id mismatch counts in vllm:nixl_num_failed_transfers and, by vLLM's `kv_load_failure_policy`,
fails the request ("fail", vLLM's default) or recomputes the prompt locally ("recompute").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from eksinfer.errors import ConfigError
from eksinfer.sim.blocks import BlockPool
from eksinfer.sim.pd import params as kvp
from eksinfer.sim.pd.config import KvTransferConfig, SideChannel
from eksinfer.sim.pd.link import transfer_s
from eksinfer.sim.pd.metrics import NixlMetrics
from eksinfer.sim.pd.pinned import PinnedBlocks
from eksinfer.sim.pd.side_channel import side_channel_app
from eksinfer.sim.scheduler import Scheduler, SimRequest

log = logging.getLogger(__name__)
SIDE_CHANNEL_TIMEOUT_S = 5.0  # vLLM's handshake socket gives up after 5 s
_REAP_POLL_S = 1.0


def descriptors(block_ids: list[int], num_layers: int) -> int:
    """NIXL descriptors of a read: vLLM coalesces contiguous block ids, one region per run and layer (a real
    vLLM 0.32 CPU pull of 22 contiguous blocks of a 2-layer model posted 2)."""
    runs = sum(1 for i, b in enumerate(block_ids) if i == 0 or b != block_ids[i - 1] + 1)
    return runs * max(num_layers, 1)


class PullError(Exception):
    """The remote KV could not be read."""


class NixlSim:
    """Both halves of the connector for one engine (vLLM 0.32 runs the same connector on P and D)."""

    def __init__(
        self,
        config: KvTransferConfig,
        *,
        pool: BlockPool,
        block_size: int,
        tp_size: int,
        kv_bytes_per_token: int,
        gbytes_per_s: float,
        num_layers: int = 1,
        metrics: NixlMetrics,
        side_channel: SideChannel,
        time_scale: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.engine_id = config.engine_id
        self.block_size = block_size
        self.tp_size = tp_size
        self.kv_bytes_per_token = kv_bytes_per_token
        self.num_layers = num_layers
        self.gbytes_per_s = gbytes_per_s
        self.metrics = metrics
        self.side_channel = side_channel
        self.port = side_channel.port  # the bound port once started
        self._time_scale = time_scale
        self.pinned = PinnedBlocks(pool, lease_s=config.lease_s, clock=clock)
        self.scheduler: Scheduler | None = None  # set by the engine that wires this connector in
        self._on_loaded: Callable[[SimRequest, bool], None] = lambda req, ok: None
        self._on_freed: Callable[[], None] = lambda: None
        self._pending: dict[str, kvp.RemotePrefill] = {}  # decode requests whose KV is not in yet
        self._pulls: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._handshakes: dict[tuple[str, int], dict[str, Any]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.last_transfer_s = 0.0  # modelled seconds of the latest pull (read by tests and the bench)
        self.heartbeats_served = 0  # heartbeat calls this engine answered (prefill side)
        metrics.bind(
            pinned_blocks=lambda: float(self.pinned.num_blocks),
            pinned_requests=lambda: float(len(self.pinned)),
            fetch_stages={
                # vLLM stamps waiting_to_start at the lookup and moves on at once: never seen between steps
                "waiting_to_start": lambda: 0.0,
                "in_progress": lambda: float(len(self._pulls)),
                "completed_waiting": lambda: float(self._completed_waiting()),
            },
        )

    def _completed_waiting(self) -> int:
        """Decode requests whose KV arrived and that wait to run (back in the queue with their blocks)."""
        scheduler = self.scheduler
        if scheduler is None:
            return 0
        return sum(1 for r in scheduler.waiting if r.num_external_tokens and r.table.blocks)

    def bind(self, *, on_loaded: Callable[[SimRequest, bool], None], on_freed: Callable[[], None]) -> None:
        """`on_loaded(req, ok)` when a pull ends; `on_freed()` when reaped blocks may admit waiting work."""
        self._on_loaded, self._on_freed = on_loaded, on_freed

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        runner = web.AppRunner(side_channel_app(self), access_log=None, handle_signals=False)
        await runner.setup()
        bind_host = "0.0.0.0" if self.side_channel.host not in ("localhost", "127.0.0.1") else "127.0.0.1"
        site = web.TCPSite(runner, bind_host, self.side_channel.port, reuse_address=True)
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            msg = f"cannot listen on {bind_host}:{self.side_channel.port}: {err.strerror}"
            raise ConfigError(msg, field="--nixl-side-channel-port") from err
        self._runner = runner
        if runner.addresses:
            self.port = int(runner.addresses[0][1])
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SIDE_CHANNEL_TIMEOUT_S))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._reaper()), loop.create_task(self._heartbeats())]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._pulls.values(), *self._background]:
            task.cancel()
        for task in [*self._tasks, *self._pulls.values(), *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks, self._pulls, self._background = [], {}, set()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- prefill side -------------------------------------------------------------------------------------

    def request_finished(self, req: SimRequest) -> bool:
        """Scheduler hook: pin a finished prefill's blocks for the decode side; True when pinned."""
        if not kvp.wants_remote_decode(req.kv_params):
            return False
        blocks = [b.block_id for b in req.table.blocks]
        req.kv_out = kvp.prefill_response(
            block_ids=blocks,
            engine_id=self.engine_id,
            request_id=req.request_id,
            host=self.side_channel.host,
            port=self.port,
            tp_size=self.tp_size,
            num_computed_tokens=req.num_computed_tokens,
            cached_tokens=max(req.num_cached_tokens, 0),
        )
        if not blocks:
            return False
        self.pinned.pin(req.request_id, req.table)
        return True

    def handshake_info(self) -> dict[str, Any]:
        return {
            "engine_id": self.engine_id,
            "block_size": self.block_size,
            "tp_size": self.tp_size,
            "kv_bytes_per_token": self.kv_bytes_per_token,
        }

    def serve_read(self, request_id: str, block_ids: list[int]) -> int | None:
        """Bytes a read of `block_ids` moves; None when the request's blocks are not pinned (any more)."""
        if request_id not in self.pinned:
            return None
        held = set(self.pinned.block_ids(request_id))
        if not set(block_ids) <= held:
            return None
        return len(block_ids) * self.block_size * self.kv_bytes_per_token

    def serve_notify(self, request_id: str) -> bool:
        if self.pinned.release(request_id):
            self._on_freed()
            return True
        self.metrics.notifications_after_expiry.inc()
        return False

    def serve_heartbeat(self, request_ids: list[str]) -> int:
        self.heartbeats_served += 1
        return self.pinned.extend(request_ids, self.config.lease_extension_s)

    def reap(self) -> int:
        """Reclaim expired leases now; returns how many requests' blocks were freed."""
        before = self.pinned.num_expired_blocks
        expired = self.pinned.reap()
        if expired:
            self.metrics.expired.inc(len(expired))
            self.metrics.expired_blocks.inc(self.pinned.num_expired_blocks - before)
            log.warning(
                "NIXL: released the KV blocks of %d request(s) no decode engine pulled "
                "within the %.0f s lease",
                len(expired),
                self.config.lease_s,
            )
            self._on_freed()
        return len(expired)

    async def _reaper(self) -> None:
        while True:
            nxt = self.pinned.next_expiry()
            wait = _REAP_POLL_S if nxt is None else min(max(nxt - self.pinned.clock(), 0.0), _REAP_POLL_S)
            await asyncio.sleep(wait)
            self.reap()

    # --- decode side --------------------------------------------------------------------------------------

    def on_new_request(self, req: SimRequest) -> None:
        """Engine hook at arrival: a remote-prefill request's lease is renewed until its KV is in."""
        if kvp.wants_remote_prefill(req.kv_params):
            assert req.kv_params is not None
            remote = kvp.remote_prefill(req.kv_params)
            if remote is None:
                log.warning(
                    "NIXL: invalid kv_transfer_params %s; request %s is prefilled locally",
                    req.kv_params,
                    req.request_id,
                )
                req.kv_params = {**req.kv_params, "do_remote_prefill": False}
            else:
                self._pending[req.request_id] = remote

    def remote_tokens(self, req: SimRequest, num_local_computed: int) -> int:
        remote = self._pending.get(req.request_id)
        if remote is None or req.request_id in self._pulls:
            return 0
        count = req.num_prompt_tokens - num_local_computed
        if count <= 0:  # all cached here: nothing to pull, but the prefill engine must free its copy
            self._pending.pop(req.request_id, None)
            self._spawn(self._notify(remote))
            return 0
        return count

    def start_load(self, req: SimRequest, num_local_blocks: int) -> None:
        remote = self._pending[req.request_id]
        task = asyncio.get_running_loop().create_task(self._pull(req, remote, num_local_blocks))
        self._pulls[req.request_id] = task

    def on_abort(self, req: SimRequest) -> None:
        """Engine hook: a decode request went away before its KV was in: stop, and let the prefill free it."""
        remote = self._pending.pop(req.request_id, None)
        task = self._pulls.pop(req.request_id, None)
        if task is not None:
            task.cancel()
        if remote is not None:
            self._spawn(self._notify(remote))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _call(
        self, method: str, remote: kvp.RemotePrefill, path: str, body: Any = None
    ) -> dict[str, Any]:
        if self._session is None:
            raise PullError("the connector is not started")
        url = f"http://{remote.host}:{remote.port}{path}"
        try:
            async with self._session.request(method, url, json=body) as resp:
                payload = await resp.json(content_type=None)
                if resp.status != 200:
                    raise PullError(f"{path}: {resp.status} {payload}")
                if not isinstance(payload, dict):
                    raise PullError(f"{path}: not a JSON object")
                return payload
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise PullError(f"{url}: {err!r}") from err

    async def _handshake(self, remote: kvp.RemotePrefill) -> dict[str, Any]:
        key = (remote.host, remote.port)
        meta = self._handshakes.get(key)
        if meta is None or meta.get("engine_id") != remote.engine_id:  # first contact, or a restarted peer
            meta = await self._call("GET", remote, "/handshake")
            self._handshakes[key] = meta
        if meta.get("engine_id") != remote.engine_id:
            raise PullError(
                f"engine {remote.host}:{remote.port} is {meta.get('engine_id')}, not {remote.engine_id}"
            )
        return meta

    async def _pull(self, req: SimRequest, remote: kvp.RemotePrefill, num_local_blocks: int) -> None:
        ok = False
        try:
            started = time.perf_counter()
            await self._handshake(remote)
            to_read = list(remote.block_ids[num_local_blocks:])
            if to_read:
                reply = await self._call(
                    "POST", remote, "/read", {"request_id": remote.request_id, "block_ids": to_read}
                )
                nbytes = int(reply.get("bytes", 0))
                self.metrics.post_time.observe(time.perf_counter() - started)
                seconds = transfer_s(nbytes, self.gbytes_per_s)
                self.last_transfer_s = seconds
                wait = seconds * self._time_scale()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.metrics.xfer_time.observe(seconds)
                self.metrics.bytes.observe(nbytes)
                self.metrics.descriptors.observe(descriptors(to_read, self.num_layers))
            ok = True
        except PullError as err:
            self.metrics.failed_transfers.inc()
            log.warning("NIXL: pulling the KV of %s failed: %s", req.request_id, err)
        self._pending.pop(req.request_id, None)
        self._pulls.pop(req.request_id, None)
        if ok:
            self._spawn(self._notify(remote))
        self._on_loaded(req, ok)

    async def _notify(self, remote: kvp.RemotePrefill) -> None:
        try:
            await self._call("POST", remote, "/notify", {"request_id": remote.request_id})
        except PullError as err:  # the prefill engine reaps the blocks when the lease runs out
            self.metrics.failed_notifications.inc()
            self.metrics.failed_transfers.inc()
            log.warning("NIXL: notifying %s:%d failed: %s", remote.host, remote.port, err)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            by_engine: dict[tuple[str, int], tuple[kvp.RemotePrefill, list[str]]] = {}
            for remote in self._pending.values():
                entry = by_engine.setdefault((remote.host, remote.port), (remote, []))
                entry[1].append(remote.request_id)
            for remote, ids in by_engine.values():
                with contextlib.suppress(PullError):
                    await self._call("POST", remote, "/heartbeat", {"request_ids": ids})
