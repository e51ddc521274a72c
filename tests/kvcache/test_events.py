"""KV-event wire format: the golden vLLM 0.32 capture, both encodings, and a decoder built from the schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from eksinfer.errors import ConfigError
from eksinfer.kvcache.events import (
    REPLAY_END_SEQ,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    KVEventsConfig,
    decode_batch,
    decode_frames,
    decode_replay_reply,
    decode_replay_request,
    encode_batch,
    encode_frames,
    encode_replay_reply,
    encode_replay_request,
    offset_endpoint_port,
)

# A vLLM 0.32 capture (CPU build, 2026-11-28), kept beside the simulator tests.
GOLDEN = Path(__file__).parents[1] / "sim" / "data" / "kv_events_blocksize128.json"


# --- An independent decoder written from vLLM's published schema (vllm/distributed/kv_events.py) ----------


class _MapStored(msgspec.Struct, tag="BlockStored", omit_defaults=True):
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[Any] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


class _MapRemoved(msgspec.Struct, tag="BlockRemoved", omit_defaults=True):
    block_hashes: list[int | bytes]
    medium: str | None
    group_idx: int | None = None


class _MapCleared(msgspec.Struct, tag="AllBlocksCleared", omit_defaults=True):
    pass


class _ArrStored(_MapStored, tag="BlockStored", array_like=True):
    pass


class _ArrRemoved(_MapRemoved, tag="BlockRemoved", array_like=True):
    pass


class _ArrCleared(_MapCleared, tag="AllBlocksCleared", array_like=True):
    pass


class _MapBatch(msgspec.Struct, array_like=True):
    ts: float
    events: list[_MapStored | _MapRemoved | _MapCleared]
    data_parallel_rank: int | None = None


class _ArrBatch(msgspec.Struct, array_like=True):
    ts: float
    events: list[_ArrStored | _ArrRemoved | _ArrCleared]
    data_parallel_rank: int | None = None


def _sample_batch() -> EventBatch:
    return EventBatch(
        ts=1795850629.5,
        events=(
            BlockStored(
                block_hashes=(2**64 - 1, 7),
                parent_block_hash=None,
                token_ids=tuple(range(32)),
                block_size=16,
                extra_keys=(None, None),
                group_idx=0,
                kv_cache_spec_kind="full_attention",
            ),
            BlockStored(
                block_hashes=(9,),
                parent_block_hash=7,
                token_ids=tuple(range(16)),
                block_size=16,
                lora_name="a",
            ),
            BlockRemoved(block_hashes=(7, 9), group_idx=0),
            AllBlocksCleared(),
        ),
        data_parallel_rank=0,
    )


def test_golden_sample_decodes_and_reencodes_byte_for_byte() -> None:
    message = json.loads(GOLDEN.read_text())[0]
    payload = msgspec.msgpack.encode(message["payload"])  # JSON->msgpack keeps the key order of the capture
    assert len(payload) == message["frame_lens"][2] == 963
    batch = decode_batch(payload)
    assert batch.data_parallel_rank == 0
    (event,) = batch.events
    assert isinstance(event, BlockStored)
    assert event.block_hashes == (8629604411436657110, 382453737980770649)
    assert event.parent_block_hash is None
    assert len(event.token_ids) == 256
    assert event.block_size == 128
    assert event.medium == "GPU"
    assert event.group_idx == 0
    assert event.kv_cache_spec_kind == "full_attention"
    assert event.extra_keys == (None, None)
    assert encode_batch(batch, "map") == payload


@pytest.mark.parametrize("encoding", ["map", "array"])
def test_round_trip(encoding: str) -> None:
    batch = _sample_batch()
    assert decode_batch(encode_batch(batch, encoding)) == batch  # type: ignore[arg-type]


def test_map_encoding_decodes_with_schema_structs() -> None:
    decoded = msgspec.msgpack.decode(encode_batch(_sample_batch(), "map"), type=_MapBatch)
    stored, lora, removed, cleared = decoded.events
    assert isinstance(stored, _MapStored)
    assert stored.block_hashes == [2**64 - 1, 7]
    assert stored.extra_keys == [None, None]
    assert stored.kv_cache_spec_kind == "full_attention"
    assert isinstance(lora, _MapStored)
    assert lora.lora_name == "a"
    assert lora.parent_block_hash == 7
    assert isinstance(removed, _MapRemoved)
    assert removed.block_hashes == [7, 9]
    assert isinstance(cleared, _MapCleared)
    assert decoded.data_parallel_rank == 0


def test_array_encoding_decodes_with_schema_structs_and_omits_trailing_defaults() -> None:
    payload = encode_batch(_sample_batch(), "array")
    decoded = msgspec.msgpack.decode(payload, type=_ArrBatch)
    assert isinstance(decoded.events[1], _ArrStored)
    assert decoded.events[1].lora_name == "a"
    raw = msgspec.msgpack.decode(payload)
    # lora event: tag + 7 required fields, trailing None defaults dropped
    assert raw[1][1] == ["BlockStored", [9], 7, list(range(16)), 16, None, "GPU", "a"]
    assert raw[1][3] == ["AllBlocksCleared"]


def test_schema_struct_encoding_decodes_with_ours() -> None:
    old = _ArrBatch(
        ts=1.0, events=[_ArrRemoved(block_hashes=[b"\x01" * 32], medium="GPU")], data_parallel_rank=2
    )
    batch = decode_batch(msgspec.msgpack.encode(old))
    assert batch.events == (BlockRemoved(block_hashes=(b"\x01" * 32,), medium="GPU"),)
    assert batch.data_parallel_rank == 2


def test_map_envelope_accepted() -> None:
    payload = msgspec.msgpack.encode({"ts": 2.0, "events": [{"type": "AllBlocksCleared"}]})
    assert decode_batch(payload) == EventBatch(ts=2.0, events=(AllBlocksCleared(),), data_parallel_rank=None)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",
        msgspec.msgpack.encode([1.0]),
        msgspec.msgpack.encode([1.0, [{"type": "Nope"}], 0]),
        msgspec.msgpack.encode([1.0, [{"type": "BlockRemoved"}], 0]),
        msgspec.msgpack.encode([1.0, [5], 0]),
    ],
)
def test_malformed_payload_is_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError, match="KV event"):
        decode_batch(payload)


def test_frames_and_replay_protocol() -> None:
    frames = encode_frames("kv@h:1@m", 258, b"x")
    assert frames == (b"kv@h:1@m", b"\x00" * 6 + b"\x01\x02", b"x")
    assert decode_frames(frames) == ("kv@h:1@m", 258, b"x")
    with pytest.raises(ValueError, match="3 frames"):
        decode_frames([b"t", b"x"])
    assert decode_replay_request([b"id", b"", encode_replay_request(5)]) == (b"id", 5)
    assert decode_replay_request([b"id", b"\x05"]) is None
    # vLLM 0.32 layout (captured live, docs/live.md): [identity, b"", topic, seq, payload].
    reply = encode_replay_reply(b"id", 5, b"p", b"kv@h:1@m")
    assert reply == (b"id", b"", b"kv@h:1@m", b"\x00" * 7 + b"\x05", b"p")
    assert decode_replay_reply(reply[1:]) == (5, b"p")  # as a DEALER sees it
    assert decode_replay_reply(reply[2:]) == (5, b"p")  # as a REQ sees it
    end = encode_replay_reply(b"id", REPLAY_END_SEQ, b"")
    assert end == (b"id", b"", b"", b"\xff" * 8, b"")
    assert decode_replay_reply(end[1:]) == (REPLAY_END_SEQ, b"")
    assert decode_replay_reply(end[2:]) == (REPLAY_END_SEQ, b"")
    # Older releases had no topic frame: [b"", seq, payload] to a DEALER, [seq, payload] to a REQ.
    seq5 = (5).to_bytes(8, "big")
    assert decode_replay_reply([b"", seq5, b"p"]) == (5, b"p")
    assert decode_replay_reply([seq5, b"p"]) == (5, b"p")
    with pytest.raises(ValueError, match="5 frames"):
        decode_replay_reply([b"", b"", b"t", seq5, b"p"])
    with pytest.raises(ValueError, match="malformed"):
        decode_replay_reply([b"", b"t", b"short", b"p"])


def test_kv_events_config() -> None:
    cfg = KVEventsConfig.from_json(
        '{"enable_kv_cache_events": true, "endpoint": "tcp://*:5600", "topic": "kv"}'
    )
    assert cfg.enabled
    assert cfg.publisher == "zmq"
    assert cfg.buffer_steps == 10_000
    assert not KVEventsConfig.from_json('{"enable_kv_cache_events": true, "publisher": "null"}').enabled
    with pytest.raises(ConfigError, match="hwm"):
        KVEventsConfig.from_json('{"hwm": "lots"}')
    with pytest.raises(ConfigError, match="JSON"):
        KVEventsConfig.from_json("{nope")
    assert offset_endpoint_port("tcp://*:5557", 3) == "tcp://*:5560"
    assert offset_endpoint_port("inproc://ev", 1) == "inproc://ev_dp1"
    assert offset_endpoint_port("tcp://*:5557", 0) == "tcp://*:5557"
