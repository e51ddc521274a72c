"""KV events and block hashes: eksinfer against a real vLLM 0.32, both ways.

* The real vLLM's ZMQ events decode with `eksinfer.kvcache.events`, and their block hashes equal
  `eksinfer.kvcache.hashing` for the token ids the engine's own /tokenize returns.
* `eksinfer sim`'s events decode with vLLM's own classes (`vllm.distributed.kv_events.KVEventBatch`) and
  their hashes equal vLLM's own `hash_block_tokens`, run in the vLLM venv (tests/live/vllm_probe.py).
* The simulator, given the same tokenizer, publishes the very hashes the real vLLM publishes for a prompt.

Servers: two `vllm serve` processes started by scripts/test-live.sh with PYTHONHASHSEED=0, block size 32 and
`--prefix-caching-hash-algo sha256_cbor`; nothing is faked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zmq

from eksinfer.kvcache.events import BlockRemoved, BlockStored, decode_batch, decode_frames
from eksinfer.kvcache.hashing import block_hashes
from tests.live.conftest import LIVE_DIR, LiveServer
from tests.live.helpers import ZmqCapture, free_port, long_text, tokenize

pytestmark = pytest.mark.live

BLOCK_SIZE = 32
SEED = "0"  # PYTHONHASHSEED of the servers (scripts/test-live.sh)


def _complete(url: str, prompt: str, max_tokens: int = 1) -> dict[str, Any]:
    body = {"model": "tiny-llama", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    r = httpx.post(url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _probe(url: str) -> Callable[[], object]:
    """A request that stores new KV blocks (a prompt no test shares), to learn that a subscriber joined."""
    return lambda: _complete(url, long_text(f"probe-{uuid.uuid4().hex}", 60))


def _stored(frames: list[list[bytes]]) -> list[BlockStored]:
    events: list[BlockStored] = []
    for parts in frames:
        _, _, payload = decode_frames(parts)
        events.extend(e for e in decode_batch(payload).events if isinstance(e, BlockStored))
    return events


def _run_probe(python: Path, payloads: list[bytes], prompts: list[list[int]]) -> dict[str, Any]:
    """vLLM's own decoder and hash function, in the vLLM venv, over the captured payloads."""
    request = {
        "payloads": [p.hex() for p in payloads],
        "hash_algo": "sha256_cbor",
        "block_size": BLOCK_SIZE,
        "prompts": prompts,
    }
    env = {**os.environ, "PYTHONHASHSEED": SEED, "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [str(python), str(LIVE_DIR / "vllm_probe.py")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(json.loads(out.stdout))


def test_real_vllm_events_decode_and_hash_as_eksinfer(
    live_servers: list[LiveServer], live_python: Path
) -> None:
    server = live_servers[0]
    capture = ZmqCapture(server.events)
    capture.join(_probe(server.url))
    try:
        prompt = long_text(f"events-{uuid.uuid4().hex[:8]}", 300)
        tokens = tokenize(server.url, prompt)
        assert len(tokens) >= 4 * BLOCK_SIZE, len(tokens)
        _complete(server.url, prompt)
        num_blocks = len(tokens) // BLOCK_SIZE
        deadline = time.monotonic() + 10  # the blocks may come in more than one batch
        while sum(len(e.block_hashes) for e in _stored(capture.wait_for(1))) < num_blocks:
            if time.monotonic() > deadline:
                break  # the assertions below say what is missing
            time.sleep(0.1)
    finally:
        frames = capture.close()
    topics = {decode_frames(p)[0] for p in frames}
    assert topics == {f"kv@{server.endpoint_id}@tiny-llama"}
    seqs = [decode_frames(p)[1] for p in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    stored = _stored(frames)
    published = [h for e in stored for h in e.block_hashes]
    published_tokens = [t for e in stored for t in e.token_ids]
    print(f"\nreal vLLM: {len(tokens)} prompt tokens, {len(frames)} batches, {len(published)} blocks stored")
    assert stored[0].parent_block_hash is None
    assert all(e.block_size == BLOCK_SIZE and e.medium == "GPU" for e in stored)
    assert published_tokens == tokens[: num_blocks * BLOCK_SIZE]
    ours = block_hashes(tokens, BLOCK_SIZE, seed=SEED, algo="sha256_cbor")
    assert published == ours
    # And vLLM's own decoder and hash function agree on the same payloads.
    probe = _run_probe(live_python, [decode_frames(p)[2] for p in frames], [tokens])
    assert probe["none_hash_seed"] == SEED
    theirs = [e for e in probe["events"] if e["type"] == "BlockStored"]
    assert [h for e in theirs for h in e["block_hashes"]] == published
    assert [h for e in theirs for h in e["recomputed"]] == published
    assert probe["prompt_hashes"] == [ours]


@pytest.fixture(scope="module")
def sim(live_model: Path) -> Iterator[tuple[str, str]]:
    """`eksinfer sim` with the tiny model's tokenizer, the servers' hashing, and a pool of 32 blocks."""
    events = f"tcp://127.0.0.1:{free_port()}"
    kv = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": events.replace("127.0.0.1", "*")}
    cmd = [
        sys.executable, "-m", "eksinfer.cli.main", "sim", "--port", "0", "--time-scale", "0",
        "--served-model-name", "tiny-llama", "--tokenizer", str(live_model), "--block-size", str(BLOCK_SIZE),
        "--num-gpu-blocks-override", "32", "--prefix-caching-hash-algo", "sha256_cbor",
        "--hash-seed", SEED, "--kv-events-config", json.dumps(kv), "--max-model-len", "992",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("engine 0: http://"), line
        yield line.split()[2].rstrip(","), events
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if proc.stdout is not None:
            proc.stdout.close()


def test_sim_events_decode_and_hash_with_vllm_code(sim: tuple[str, str], live_python: Path) -> None:
    url, events = sim
    tag = uuid.uuid4().hex[:8]
    # Two prompts sharing a prefix (the second event chains on a parent), then four more that overflow the
    # 32-block pool, so the stream also carries BlockRemoved.
    base = long_text(f"sim-{tag}", 220)
    prompts = [base, f"{base} And a different ending: {long_text(f'end-{tag}', 80)}"]
    prompts += [long_text(f"sim-{i}-{tag}", 220) for i in range(4)]
    capture = ZmqCapture(events)
    capture.join(_probe(url))
    try:
        token_lists = [tokenize(url, p) for p in prompts]
        for p in prompts:
            _complete(url, p)
        frames = capture.wait_for(len(prompts))
    finally:
        frames = capture.close()
    payloads = [decode_frames(p)[2] for p in frames]
    ours = [e for p in payloads for e in decode_batch(p).events]
    probe = _run_probe(live_python, payloads, token_lists)
    theirs = probe["events"]
    assert [type(e).__name__ for e in ours] == [e["type"] for e in theirs]
    assert any(isinstance(e, BlockRemoved) for e in ours), "the small pool should have evicted blocks"
    chained = [e for e in theirs if e["type"] == "BlockStored" and e["parent_block_hash"] is not None]
    assert chained, "the shared-prefix prompt should store blocks under a parent"
    for mine, vllm_view in zip(ours, theirs, strict=True):
        assert list(mine.block_hashes) == vllm_view["block_hashes"]  # type: ignore[union-attr]
        if isinstance(mine, BlockStored):
            assert list(mine.token_ids) == vllm_view["token_ids"]
            assert vllm_view["recomputed"] == vllm_view["block_hashes"]  # vLLM's own hash of the sim's blocks
    for tokens, vllm_chain in zip(token_lists, probe["prompt_hashes"], strict=True):
        assert block_hashes(tokens, BLOCK_SIZE, seed=SEED, algo="sha256_cbor") == vllm_chain
    print(f"\nsim: {len(frames)} batches, {len(ours)} events decoded by vLLM's KVEventBatch, hashes equal")


def test_sim_and_real_vllm_publish_the_same_hashes(
    sim: tuple[str, str], live_servers: list[LiveServer]
) -> None:
    sim_url, sim_events = sim
    server = live_servers[1]
    prompt = long_text(f"same-{uuid.uuid4().hex[:8]}", 200)
    messages = [{"role": "user", "content": prompt}]
    assert tokenize(sim_url, prompt) == tokenize(server.url, prompt)
    chat = {"model": "tiny-llama", "messages": messages}
    sim_chat = httpx.post(sim_url + "/tokenize", json=chat, timeout=30).json()["tokens"]
    real_chat = httpx.post(server.url + "/tokenize", json=chat, timeout=30).json()["tokens"]
    assert sim_chat == real_chat
    published: dict[str, list[int]] = {}
    for name, url, address in (("sim", sim_url, sim_events), ("vllm", server.url, server.events)):
        capture = ZmqCapture(address)
        capture.join(_probe(url))
        try:
            _complete(url, prompt)
            frames = capture.wait_for(1)
        finally:
            frames = capture.close()
        published[name] = [h for e in _stored(frames) for h in e.block_hashes]
    assert published["sim"] == published["vllm"]
    assert len(published["vllm"]) >= 4


def test_real_vllm_replay_socket_frames(live_servers: list[LiveServer]) -> None:
    """What vLLM 0.32's replay socket (ROUTER at `replay_endpoint`) really answers a DEALER asking from seq 0:
    [b"", topic, seq (8-byte BE), payload] per buffered batch, then [b"", b"", -1 (signed 8-byte BE), b""]
    (vllm/distributed/kv_events.py `ZmqEventPublisher._service_replay`)."""
    server = live_servers[0]
    _complete(server.url, long_text(f"replay-{uuid.uuid4().hex[:8]}", 100))  # at least one batch buffered
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    try:
        sock.connect(server.replay)
        sock.send_multipart([b"", (0).to_bytes(8, "big")])
        replies = []
        while True:
            parts = sock.recv_multipart()
            replies.append(parts)
            if parts[2] == (-1).to_bytes(8, "big", signed=True):
                break
    finally:
        sock.close()
        ctx.term()
    *batches, end = replies
    assert end == [b"", b"", (-1).to_bytes(8, "big", signed=True), b""]
    assert batches
    seqs = []
    for parts in batches:
        assert len(parts) == 4, [len(p) for p in parts]
        assert parts[0] == b""
        assert parts[1] == f"kv@{server.endpoint_id}@tiny-llama".encode()
        seqs.append(int.from_bytes(parts[2], "big"))
        decode_batch(parts[3])  # a normal batch payload
    assert seqs == list(range(len(seqs)))  # the whole history from seq 0 (buffer_steps 10,000)
    print(f"\nreplay socket: {len(batches)} batches from seq 0, 4 frames each [b'', topic, seq, payload]")
