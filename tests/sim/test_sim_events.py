"""KV events over real ZMQ sockets: what a subscriber decodes equals vLLM's hashes of the prompt's blocks."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import httpx
import msgspec
import zmq
import zmq.asyncio

from eksinfer.kvcache.events import (
    REPLAY_END_SEQ,
    BlockRemoved,
    BlockStored,
    EventBatch,
    decode_batch,
    decode_frames,
    decode_replay_reply,
    encode_replay_request,
)
from eksinfer.kvcache.hashing import block_hashes
from eksinfer.sim.cluster import SimCluster
from eksinfer.sim.config import FaultOptions
from tests.sim.conftest import StartCluster, events_config
from tests.waiting import DEADLINE_S


async def _subscribe(cluster: SimCluster, i: int) -> tuple[zmq.asyncio.Socket, int]:
    """A SUB socket that has joined replica `i`'s publisher, and the last sequence number it has seen.

    A PUB socket drops what it sends before a subscription reaches it (ZMQ's slow joiner), and nothing
    says when that has happened. So the test sends probe requests (prompts no test uses) until one
    batch arrives: from then on the subscriber gets every batch.
    """
    endpoint = cluster.event_endpoints[i]
    assert endpoint is not None
    sub = zmq.asyncio.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    deadline = time.monotonic() + DEADLINE_S
    for probe in itertools.count():
        assert time.monotonic() < deadline, "the subscription never reached the publisher"
        await _complete(cluster, i, list(range(50000 + 32 * probe, 50000 + 32 * probe + 32)))
        try:
            frames = await asyncio.wait_for(sub.recv_multipart(), timeout=0.2)
        except TimeoutError:
            continue
        while await sub.poll(0):  # a late batch of an earlier probe: take the newest
            frames = await sub.recv_multipart()
        return sub, decode_frames(frames)[1]
    raise AssertionError("unreachable")


async def _recv(sub: zmq.asyncio.Socket, n: int) -> list[tuple[str, int, EventBatch]]:
    out = []
    for _ in range(n):
        frames = await asyncio.wait_for(sub.recv_multipart(), timeout=DEADLINE_S)
        topic, seq, payload = decode_frames(frames)
        out.append((topic, seq, decode_batch(payload)))
    return out


async def _replay(endpoint: str, start: int) -> list[tuple[int, bytes]]:
    dealer = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    try:
        await dealer.send_multipart([b"", encode_replay_request(start)])
        got = []
        while True:
            reply = await asyncio.wait_for(dealer.recv_multipart(), timeout=DEADLINE_S)
            seq, payload = decode_replay_reply(reply)
            if seq == REPLAY_END_SEQ:
                return got
            got.append((seq, payload))
    finally:
        dealer.close(0)


async def _complete(
    cluster: SimCluster, i: int, prompt: list[int], max_tokens: int = 1, **extra: Any
) -> None:
    body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, **extra}
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(cluster.urls[i] + "/v1/completions", json=body)
        assert r.status_code == 200, r.text


async def test_block_stored_hashes_equal_vllm_hashes(start: StartCluster) -> None:
    cluster = await start(kv_events=events_config())
    sub, last_seq = await _subscribe(cluster, 0)
    try:
        prompt = list(range(1000, 1040))  # 40 tokens: 2 full blocks
        await _complete(cluster, 0, prompt)
        ((topic, seq, batch),) = await _recv(sub, 1)
    finally:
        sub.close(0)
    assert topic == f"kv@127.0.0.1:{cluster.ports[0]}@llama-3.1-8b"
    assert seq == last_seq + 1
    replay = cluster.replicas[0].replay_endpoint
    assert replay is not None
    assert (await _replay(replay, 0))[0][0] == 0  # sequence numbers start at 0
    assert batch.data_parallel_rank == 0
    (event,) = batch.events
    assert event == BlockStored(
        block_hashes=tuple(block_hashes(prompt, 16)),
        parent_block_hash=None,
        token_ids=tuple(prompt[:32]),
        block_size=16,
        lora_id=None,
        medium="GPU",
        lora_name=None,
        extra_keys=(None, None),
        group_idx=0,
        kv_cache_spec_kind="full_attention",
    )


async def test_decode_blocks_extend_the_chain_and_replay_recovers(start: StartCluster) -> None:
    cluster = await start(kv_events=events_config(), faults=FaultOptions(events_drop_rate=1.0))
    replay = cluster.replicas[0].replay_endpoint
    assert replay is not None
    prompt = list(range(2000, 2030))  # 30 prompt tokens + 20 generated: blocks 0..2 full
    await _complete(cluster, 0, prompt, max_tokens=20)
    got = await _replay(replay, 0)  # every batch was "lost" on PUB; replay has them all
    assert [seq for seq, _ in got] == list(range(len(got)))
    events = [e for _, payload in got for e in decode_batch(payload).events]
    stored = [e for e in events if isinstance(e, BlockStored)]
    hashes = [h for e in stored for h in e.block_hashes]
    tokens = [t for e in stored for t in e.token_ids]
    assert tokens[:30] == prompt
    assert hashes == block_hashes(tokens, 16)  # chained over prompt and generated tokens
    assert len(hashes) == 3
    assert stored[1].parent_block_hash == stored[0].block_hashes[-1]
    later = await _replay(replay, 1)
    assert [seq for seq, _ in later] == [seq for seq, _ in got][1:]


async def test_eviction_publishes_block_removed(start: StartCluster) -> None:
    cluster = await start(kv_events=events_config(), num_gpu_blocks=5, max_model_len=64)  # 4 usable blocks
    replay = cluster.replicas[0].replay_endpoint
    assert replay is not None
    first, second = list(range(3000, 3032)), list(range(4000, 4060))
    await _complete(cluster, 0, first)  # caches 2 blocks, then frees them (still cached)
    await _complete(cluster, 0, second)  # 60 tokens need all 4 blocks: 2 fresh + the 2 cached ones of `first`
    events = [e for _, p in await _replay(replay, 0) for e in decode_batch(p).events]
    removed = [h for e in events if isinstance(e, BlockRemoved) for h in e.block_hashes]
    a0, a1 = block_hashes(first, 16)
    assert removed == [a1, a0]  # the tail of the freed prefix goes first


async def test_array_encoding_and_replica_offsets(start: StartCluster) -> None:
    config = events_config(2, topic="kv")
    cluster = await start(2, kv_events=config, kv_events_encoding="array")
    base = int(config.endpoint.rsplit(":", 1)[1])
    assert cluster.event_endpoints == [f"tcp://127.0.0.1:{base}", f"tcp://127.0.0.1:{base + 1}"]
    sub, _ = await _subscribe(cluster, 1)
    try:
        await _complete(cluster, 1, list(range(16, 48)))
        frames = await asyncio.wait_for(sub.recv_multipart(), timeout=DEADLINE_S)
    finally:
        sub.close(0)
    raw = msgspec.msgpack.decode(frames[2])
    assert raw[2] == 1  # data_parallel_rank = replica index
    assert raw[1][0][0] == "BlockStored"  # positional, tagged array
    assert decode_batch(frames[2]).events[0].block_hashes == tuple(block_hashes(list(range(16, 48)), 16))  # type: ignore[union-attr]


async def test_lora_and_cache_salt_enter_hashes_as_vllm_032_does(start: StartCluster) -> None:
    cluster = await start(kv_events=events_config(), lora_modules=("sql=/adapters/sql",))
    replay = cluster.replicas[0].replay_endpoint
    assert replay is not None
    prompt = list(range(500, 532))
    await _complete(cluster, 0, prompt, model="sql")
    await _complete(cluster, 0, prompt, cache_salt="tenant-a")
    first, second = (decode_batch(p).events[0] for _, p in await _replay(replay, 0))
    assert isinstance(first, BlockStored)
    assert first.lora_name == "sql"
    assert first.lora_id == 1
    assert first.extra_keys == (("sql",), ("sql",))  # published untagged
    assert list(first.block_hashes) == block_hashes(prompt, 16, lora_name="sql", lora_path="/adapters/sql")
    assert isinstance(second, BlockStored)
    assert second.extra_keys == (("tenant-a",), None)  # the salt keys block 0 only
    assert list(second.block_hashes) == block_hashes(prompt, 16, cache_salt="tenant-a")


async def test_reset_prefix_cache_publishes_all_blocks_cleared(start: StartCluster) -> None:
    from eksinfer.kvcache.events import AllBlocksCleared

    cluster = await start(kv_events=events_config())
    replay = cluster.replicas[0].replay_endpoint
    assert replay is not None
    await _complete(cluster, 0, list(range(64)))
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(cluster.urls[0] + "/reset_prefix_cache")
    assert r.status_code == 200
    batches = [decode_batch(p) for _, p in await _replay(replay, 0)]
    assert batches[-1].events == (AllBlocksCleared(),)
    assert cluster.engines[0].pool.num_cached_blocks == 0
