"""The engine's KV-event publisher: vLLM's `ZmqEventPublisher` behaviour on the asyncio loop.

- PUB socket on `endpoint` (bound when it has `*`, `::`, `ipc://` or `inproc://`, else connected), port offset
  by the replica index as vLLM offsets data-parallel ranks; high-water mark `hwm` (ZMQ drops beyond it).
- One batch per engine step that produced events; frames (topic, seq 8-byte BE, msgpack), seq from 0.
- The last `buffer_steps` payloads are kept, and at most `REPLAY_BUFFER_BYTES` of them (a bound vLLM does not
  have: a batch storing a 28k-token prompt carries its ids, ~100 KB, and 10,000 of those are a GB; the oldest
  go first, as past `buffer_steps`); a ROUTER on `replay_endpoint` answers
  [identity, b"", start_seq] with every kept (seq, payload) with seq >= start_seq, then (-1, b"").
- Faults: `events_drop_rate` skips sending a batch (it stays replayable, so subscribers see a seq gap);
  `events_close_after` closes the PUB socket after that many batches.

The PUB socket is a plain ZMQ socket used non-blocking (sends never wait); the ROUTER is a zmq.asyncio one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Sequence

import zmq
import zmq.asyncio

from eksinfer.errors import ConfigError
from eksinfer.kvcache.events import (
    REPLAY_END_SEQ,
    Encoding,
    EventBatch,
    KVEvent,
    KVEventsConfig,
    decode_replay_request,
    encode_batch,
    encode_replay_reply,
    offset_endpoint_port,
)

log = logging.getLogger(__name__)
REPLAY_BUFFER_BYTES = 16 * 1024**2  # thousands of ordinary steps (a few KB each), 160 of 28k-token prompts


def _binds(endpoint: str) -> bool:
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


class EventPublisher:
    """Publishes one engine's KV events; `start()` binds, `close()` releases both sockets."""

    def __init__(
        self,
        config: KVEventsConfig,
        *,
        rank: int,
        topic: str,
        encoding: Encoding = "map",
        drop_rate: float = 0.0,
        close_after: int = 0,
        seed: int = 0,
    ) -> None:
        self.config = config
        self.rank = rank
        self.topic = topic.encode("utf-8")
        self.encoding: Encoding = encoding
        self.endpoint = offset_endpoint_port(config.endpoint, rank) or config.endpoint
        self.replay_endpoint = offset_endpoint_port(config.replay_endpoint, rank)
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=max(config.buffer_steps, 1))
        self._buffer_bytes = 0
        self._seq = 0
        self._drop_rate = drop_rate
        self._close_after = close_after
        self._rng = random.Random(seed * 7919 + rank)
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._actx: zmq.asyncio.Context | None = None
        self._pub: zmq.Socket[bytes] | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.sent_batches = 0

    def start(self) -> None:
        self._ctx = zmq.Context.instance()
        pub = self._ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, self.config.hwm)
        pub.setsockopt(zmq.LINGER, 0)
        try:
            if _binds(self.endpoint):
                pub.bind(self.endpoint)
            else:
                pub.connect(self.endpoint)
        except zmq.ZMQError as err:
            pub.close(0)
            raise ConfigError(
                f"cannot use {self.endpoint}: {err}", field="--kv-events-config.endpoint"
            ) from err
        self._pub = pub
        if self.replay_endpoint:
            self._actx = zmq.asyncio.Context.instance()
            router = self._actx.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            try:
                router.bind(self.replay_endpoint)
            except zmq.ZMQError as err:
                router.close(0)
                raise ConfigError(
                    f"cannot bind {self.replay_endpoint}: {err}", field="--kv-events-config.replay_endpoint"
                ) from err
            self._router = router
            self._task = asyncio.get_running_loop().create_task(self._serve_replay(), name="kv-replay")

    @property
    def next_seq(self) -> int:
        return self._seq

    def publish(self, events: Sequence[KVEvent]) -> None:
        """Encode, number, keep for replay and send one batch (never blocks)."""
        if not events:
            return
        batch = EventBatch(ts=time.time(), events=tuple(events), data_parallel_rank=self.rank)
        payload = encode_batch(batch, self.encoding)
        seq = self._seq
        self._seq += 1
        if len(self._buffer) == self._buffer.maxlen:
            self._buffer_bytes -= len(self._buffer[0][1])
        self._buffer.append((seq, payload))
        self._buffer_bytes += len(payload)
        while self._buffer_bytes > REPLAY_BUFFER_BYTES and len(self._buffer) > 1:
            self._buffer_bytes -= len(self._buffer.popleft()[1])
        pub = self._pub
        if pub is None:
            return
        if self._drop_rate and self._rng.random() < self._drop_rate:
            return
        try:
            pub.send_multipart((self.topic, seq.to_bytes(8, "big"), payload), flags=zmq.NOBLOCK)
        except zmq.ZMQError as err:  # a full HWM drops, as vLLM's PUB does
            log.debug("KV event batch %d not sent: %s", seq, err)
            return
        self.sent_batches += 1
        if self._close_after and self.sent_batches >= self._close_after:
            log.info(
                "fault injection: closing KV event socket %s after %d batches",
                self.endpoint,
                self.sent_batches,
            )
            pub.close(0)
            self._pub = None

    async def _serve_replay(self) -> None:
        router = self._router
        assert router is not None
        while True:
            frames = await router.recv_multipart()
            request = decode_replay_request(frames)
            if request is None:
                log.warning("invalid KV replay request with %d frames", len(frames))
                continue
            identity, start = request
            for seq, payload in list(self._buffer):
                if seq >= start:
                    await router.send_multipart(encode_replay_reply(identity, seq, payload, self.topic))
            await router.send_multipart(encode_replay_reply(identity, REPLAY_END_SEQ, b""))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._router is not None:
            self._router.close(0)
            self._router = None
        if self._pub is not None:
            self._pub.close(0)
            self._pub = None
