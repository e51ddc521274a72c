"""The KV-event subscriber against a real ZMQ PUB + ROUTER publisher on 127.0.0.1 (vLLM's wire format)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import zmq
import zmq.asyncio

from eksinfer.kvcache.events import (
    REPLAY_END_SEQ,
    BlockStored,
    EventBatch,
    decode_replay_request,
    encode_batch,
    encode_frames,
    encode_replay_reply,
)
from eksinfer.kvcache.index import PrefixIndex, chain_keys
from eksinfer.kvcache.subscriber import KvEventSubscriber, replay_endpoint_for
from tests.waiting import DEADLINE_S, until

pytestmark = pytest.mark.timeout(20)
BS = 4


def batch(i: int, encoding: str = "map") -> bytes:
    """Batch i stores one block of tokens [i*4 .. i*4+3] at the root, hash 1000+i."""
    ev = BlockStored((1000 + i,), None, tuple(range(i * BS, i * BS + BS)), BS)
    return encode_batch(EventBatch(ts=0.0, events=(ev,)), encoding)  # type: ignore[arg-type]


class Publisher:
    """A minimal vLLM-style publisher: PUB socket plus a ROUTER replay socket over a buffer of batches."""

    def __init__(self, ctx: zmq.asyncio.Context) -> None:
        self.pub = ctx.socket(zmq.PUB)
        self.pub.bind("tcp://127.0.0.1:*")
        self.router = ctx.socket(zmq.ROUTER)
        self.router.bind("tcp://127.0.0.1:*")
        self.buffer: dict[int, bytes] = {}
        self.replay_requests: list[int] = []
        self._task = asyncio.get_running_loop().create_task(self._serve_replay())

    @property
    def endpoint(self) -> str:
        return str(self.pub.getsockopt(zmq.LAST_ENDPOINT).decode())

    @property
    def replay_endpoint(self) -> str:
        return str(self.router.getsockopt(zmq.LAST_ENDPOINT).decode())

    async def publish(self, seq: int, payload: bytes, *, live: bool = True) -> None:
        self.buffer[seq] = payload
        if live:
            await self.pub.send_multipart(encode_frames("kv@test@m", seq, payload))

    async def _serve_replay(self) -> None:
        while True:
            request = decode_replay_request(await self.router.recv_multipart())
            assert request is not None
            identity, start = request
            self.replay_requests.append(start)
            for seq in sorted(s for s in self.buffer if s >= start):
                await self.router.send_multipart(
                    encode_replay_reply(identity, seq, self.buffer[seq], b"kv@test@m")
                )
            await self.router.send_multipart(encode_replay_reply(identity, REPLAY_END_SEQ, b""))

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.pub.close(0)
        self.router.close(0)


@pytest.fixture
async def ctx() -> AsyncIterator[zmq.asyncio.Context]:
    context = zmq.asyncio.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
async def publisher(ctx: zmq.asyncio.Context) -> AsyncIterator[Publisher]:
    pub = Publisher(ctx)
    yield pub
    await pub.close()


def make_sub(
    index: PrefixIndex, endpoint: str, replay: str | None, ctx: zmq.asyncio.Context
) -> KvEventSubscriber:
    return KvEventSubscriber(
        "e1",
        endpoint,
        replay,
        on_event=index.apply_event,
        on_reset=index.clear_endpoint,
        replay_timeout_s=DEADLINE_S,  # a replay answers in milliseconds; only a busy machine waits longer
        context=ctx,
        wall_clock=lambda: 5.0,
    )


def held(index: PrefixIndex, i: int) -> bool:
    return index.match("e1", chain_keys(list(range(i * BS, i * BS + BS)), BS)) == 1


async def test_live_pubsub_recovers_early_batches_through_replay(
    ctx: zmq.asyncio.Context, publisher: Publisher
) -> None:
    index = PrefixIndex()
    # Published before anyone subscribed: lost on the PUB socket, kept in the replay buffer.
    for seq in range(3):
        await publisher.publish(seq, batch(seq))
    sub = make_sub(index, publisher.endpoint, publisher.replay_endpoint, ctx)
    sub.start()
    try:
        await asyncio.wait_for(sub.connected.wait(), DEADLINE_S)
        seq = 3
        while not held(index, 3):  # PUB/SUB joins asynchronously: keep publishing until one arrives
            await publisher.publish(seq, batch(seq))
            seq += 1
            await asyncio.sleep(0.05)
        await until(lambda: sub.stats.last_seq == seq - 1, what="every batch applied")
    finally:
        await sub.stop()
    assert publisher.replay_requests[0] == 0
    assert all(held(index, i) for i in range(seq))
    assert sub.stats.lost_batches == 0
    assert sub.stats.lag_s == 5.0


async def test_gap_is_filled_from_replay(ctx: zmq.asyncio.Context, publisher: Publisher) -> None:
    index = PrefixIndex()
    sub = make_sub(index, publisher.endpoint, publisher.replay_endpoint, ctx)
    await publisher.publish(1, batch(1), live=False)
    await publisher.publish(2, batch(2), live=False)
    await sub.handle_frames(list(encode_frames("t", 0, batch(0))))
    await sub.handle_frames(list(encode_frames("t", 3, batch(3, "array"))))  # 1 and 2 missing
    assert publisher.replay_requests == [1]
    assert [held(index, i) for i in range(4)] == [True] * 4
    assert (sub.stats.gaps, sub.stats.replayed_batches, sub.stats.lost_batches) == (1, 2, 0)
    # A live duplicate of a replayed batch is skipped.
    await sub.handle_frames(list(encode_frames("t", 2, batch(2))))
    assert sub.stats.duplicates == 1
    assert sub.stats.batches == 4


async def test_gap_without_replay_counts_lost(ctx: zmq.asyncio.Context) -> None:
    index = PrefixIndex()
    sub = make_sub(index, "tcp://127.0.0.1:1", None, ctx)
    await sub.handle_frames(list(encode_frames("t", 0, batch(0))))
    await sub.handle_frames(list(encode_frames("t", 5, batch(5))))
    assert sub.stats.lost_batches == 4
    assert held(index, 5)


async def test_replay_timeout_counts_lost(ctx: zmq.asyncio.Context) -> None:
    silent = ctx.socket(zmq.ROUTER)
    silent.bind("tcp://127.0.0.1:*")
    try:
        index = PrefixIndex()
        sub = KvEventSubscriber(
            "e1",
            "tcp://127.0.0.1:1",
            silent.getsockopt(zmq.LAST_ENDPOINT).decode(),
            on_event=index.apply_event,
            on_reset=index.clear_endpoint,
            replay_timeout_s=0.2,
            context=ctx,
        )
        await sub.handle_frames(list(encode_frames("t", 0, batch(0))))
        await sub.handle_frames(list(encode_frames("t", 3, batch(3))))
        assert sub.stats.lost_batches == 2
        assert held(index, 3)
    finally:
        silent.close(0)


async def test_publisher_restart_clears_the_endpoint(ctx: zmq.asyncio.Context) -> None:
    index = PrefixIndex()
    sub = make_sub(index, "tcp://127.0.0.1:1", None, ctx)
    for seq in range(3):
        await sub.handle_frames(list(encode_frames("t", seq, batch(seq))))
    await sub.handle_frames(list(encode_frames("t", 0, batch(7))))  # seq back to 0: a new engine process
    assert sub.stats.restarts == 1
    assert not held(index, 0)
    assert held(index, 7)


async def test_malformed_frames_are_counted_not_raised(ctx: zmq.asyncio.Context) -> None:
    index = PrefixIndex()
    sub = make_sub(index, "tcp://127.0.0.1:1", None, ctx)
    await sub.handle_frames([b"only-one-frame"])
    await sub.handle_frames([b"t", (0).to_bytes(8, "big"), b"\xc1not msgpack"])
    assert sub.stats.decode_errors == 2


def test_replay_endpoint_for() -> None:
    assert replay_endpoint_for("tcp://10.0.0.1:5557", 1) == "tcp://10.0.0.1:5558"
    assert replay_endpoint_for("tcp://10.0.0.1:5557", None) is None


async def test_idle_probe_recovers_batches_no_live_message_reveals(
    ctx: zmq.asyncio.Context, publisher: Publisher
) -> None:
    """Events published before the SUB joined, and nothing after: the connect-time and idle replay probes
    still load them (a gap is only visible once a later batch arrives)."""
    index = PrefixIndex()
    sub = KvEventSubscriber(
        "e1",
        publisher.endpoint,
        publisher.replay_endpoint,
        on_event=index.apply_event,
        on_reset=index.clear_endpoint,
        probe_s=0.05,
        context=ctx,
    )
    sub.start()
    try:
        await asyncio.wait_for(sub.connected.wait(), DEADLINE_S)
        await publisher.publish(0, batch(0), live=False)  # as if the PUB dropped it before the SUB joined
        await publisher.publish(1, batch(1), live=False)
        await until(lambda: held(index, 1), what="replay probe loaded the dropped batches")
    finally:
        await sub.stop()
    assert held(index, 0)
    assert held(index, 1)
    assert sub.stats.probes >= 1
    assert sub.stats.lost_batches == 0
