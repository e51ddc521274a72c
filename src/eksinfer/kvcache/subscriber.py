"""Subscribe to one engine's KV events (vLLM's ZMQ publisher) and feed them to the prefix index in order.

Wire format (vllm/distributed/kv_events.py, `ZmqEventPublisher`; decoding in kvcache.events): a PUB socket
sends 3 frames (topic, 8-byte big-endian sequence number, msgpack batch). Sequence numbers count batches from
0 per publisher process, so:

    first message with seq > 0   events were published before we connected: replay from 0 (what the buffer
    has) seq > last + 1               a gap (slow subscriber, HWM drop, reconnect): replay from last + 1
    seq <= last, small step back a duplicate of what a replay already delivered: skip
    seq == 0 or a big step back  the engine restarted (its cache is empty): clear its index, then go on

Replay uses the publisher's ROUTER socket (`replay_endpoint`): a DEALER sends [b"", start_seq], the publisher
answers [b"", seq, payload] for each buffered batch (vLLM keeps `buffer_steps`, 10,000) and ends with seq =
-1. When no replay endpoint is known or it does not answer within `replay_timeout_s`, the missing batches are
counted as lost and the index may hold stale entries until their blocks are evicted or reused.

On connect, and after every `probe_s` (2 s) without a message, the subscriber also asks the replay socket for
anything after the last applied batch: that loads what the engine cached before we connected (ZMQ drops what
a PUB sends before the SUB has joined), and recovers a lost *last* batch, which no later sequence number would
reveal. The SUB socket reconnects by itself (ZMQ); we also re-create it after `silence_reconnect_s` without a
message and after any socket error, with `reconnect_s` between attempts. Lag = receive time - the batch's
`ts` (both wall clock), reported as the last value and the maximum.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import zmq
import zmq.asyncio

from eksinfer.kvcache.events import (
    REPLAY_END_SEQ,
    decode_batch,
    decode_frames,
    decode_replay_reply,
    encode_replay_request,
)

log = logging.getLogger(__name__)

# A step back of at most this many batches is a duplicate from a replay, more is a publisher restart.
DUPLICATE_WINDOW = 1024


def replay_endpoint_for(events_endpoint: str, port_offset: int | None) -> str | None:
    """Replay address as the events address with the port moved by `port_offset` (None: no replay)."""
    if port_offset is None or not events_endpoint.startswith("tcp://"):
        return None
    base, _, port = events_endpoint.rpartition(":")
    return f"{base}:{int(port) + port_offset}" if port.isdigit() else None


@dataclass(slots=True)
class SubscriberStats:
    batches: int = 0
    events: int = 0
    gaps: int = 0
    replays: int = 0
    replayed_batches: int = 0
    lost_batches: int = 0
    duplicates: int = 0
    probes: int = 0
    restarts: int = 0
    reconnects: int = 0
    decode_errors: int = 0
    last_seq: int | None = None
    lag_s: float | None = None
    lag_s_max: float = 0.0
    last_message_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class KvEventSubscriber:
    """One endpoint's SUB socket in a background task; `on_event(endpoint_id, event)` per decoded event."""

    def __init__(
        self,
        endpoint_id: str,
        endpoint: str,
        replay_endpoint: str | None,
        *,
        on_event: Callable[[str, Any], object],
        on_reset: Callable[[str], object],
        topic: str = "",
        reconnect_s: float = 1.0,
        replay_timeout_s: float = 1.0,
        silence_reconnect_s: float = 30.0,
        probe_s: float = 2.0,
        context: zmq.asyncio.Context | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.endpoint_id = endpoint_id
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self._on_event = on_event
        self._on_reset = on_reset
        self._topic = topic.encode()
        self._reconnect_s = reconnect_s
        self._replay_timeout_ms = int(replay_timeout_s * 1000)
        self._silence_ms = int(silence_reconnect_s * 1000)
        self._probe_ms = max(1, int(probe_s * 1000))
        self._own_context = context is None
        self._ctx = context or zmq.asyncio.Context()
        self._wall = wall_clock
        self._task: asyncio.Task[None] | None = None
        self.stats = SubscriberStats()
        self.connected = asyncio.Event()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"kv-events-{self.endpoint_id}"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._own_context:
            self._ctx.destroy(linger=0)

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (zmq.ZMQError, OSError) as err:
                log.warning("kv events %s (%s): %s", self.endpoint_id, self.endpoint, err)
            self.stats.reconnects += 1
            await asyncio.sleep(self._reconnect_s)

    async def _session(self) -> None:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, self._topic)
        try:
            sock.connect(self.endpoint)
            self.connected.set()
            if self.stats.last_seq is None:
                await self.catch_up()  # what the engine cached before we connected
            silent_ms = 0
            while True:
                if not await sock.poll(self._probe_ms):
                    silent_ms += self._probe_ms
                    await self.catch_up()  # a lost last batch is followed by no gap to reveal it
                    if silent_ms >= self._silence_ms:
                        return  # silent for too long: re-create the socket (the engine may have moved)
                    continue
                silent_ms = 0
                await self.handle_frames(await sock.recv_multipart())
        finally:
            sock.close(linger=0)

    async def catch_up(self) -> None:
        """Ask the replay socket for anything after the last applied batch (no-op without one)."""
        if self.replay_endpoint is not None:
            self.stats.probes += 1
            last = self.stats.last_seq
            await self._replay(0 if last is None else last + 1, None)

    async def handle_frames(self, frames: list[bytes]) -> None:
        """Sequence bookkeeping, replay on gaps, then apply (public for tests that feed frames directly)."""
        try:
            _topic, seq, payload = decode_frames(frames)
        except ValueError:
            self.stats.decode_errors += 1
            return
        st = self.stats
        last = st.last_seq
        if last is not None and seq <= last:
            if seq != 0 and last - seq <= DUPLICATE_WINDOW:
                st.duplicates += 1
                return
            st.restarts += 1
            log.info(
                "kv events %s: publisher restarted (seq %d after %d); clearing", self.endpoint_id, seq, last
            )
            self._on_reset(self.endpoint_id)
            st.last_seq = last = None
        if (last is None and seq > 0) or (last is not None and seq > last + 1):
            start = 0 if last is None else last + 1
            if last is not None:
                st.gaps += 1
            await self._replay(start, seq)
            if st.last_seq is not None and seq <= st.last_seq:
                return  # the replay already delivered this batch
        self._apply(seq, payload)

    def _apply(self, seq: int, payload: bytes) -> None:
        st = self.stats
        st.last_seq = seq
        try:
            batch = decode_batch(payload)
        except ValueError as err:
            st.decode_errors += 1
            log.debug("kv events %s: bad batch %d: %s", self.endpoint_id, seq, err)
            return
        st.batches += 1
        st.events += len(batch.events)
        now = self._wall()
        st.last_message_at = now
        st.lag_s = max(0.0, now - batch.ts)
        st.lag_s_max = max(st.lag_s_max, st.lag_s)
        for event in batch.events:
            self._on_event(self.endpoint_id, event)

    async def _replay(self, start: int, live_seq: int | None) -> None:
        """Fetch batches from `start` on from the replay socket; when a live batch `live_seq` revealed a gap,
        count what could not be recovered before it as lost."""
        st = self.stats
        if self.replay_endpoint is None:
            st.lost_batches += max(0, (live_seq or start) - start)
            return
        if live_seq is not None:
            st.replays += 1
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.replay_endpoint)
            await sock.send_multipart([b"", encode_replay_request(start)])
            while True:
                if not await sock.poll(self._replay_timeout_ms):
                    log.warning("kv events %s: replay from %d timed out", self.endpoint_id, start)
                    break
                seq, payload = decode_replay_reply(await sock.recv_multipart())
                if seq == REPLAY_END_SEQ:
                    break
                if st.last_seq is None or seq > st.last_seq:
                    self._apply(seq, payload)
                    st.replayed_batches += 1
        except (zmq.ZMQError, ValueError) as err:
            log.warning("kv events %s: replay failed: %s", self.endpoint_id, err)
        finally:
            sock.close(linger=0)
        if live_seq is not None:
            recovered_to = st.last_seq if st.last_seq is not None else start - 1
            st.lost_batches += max(0, live_seq - 1 - recovered_to)
