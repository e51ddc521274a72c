"""vLLM's KV-cache event schema and ZMQ wire format, shared by the simulator and the gateway.

Schema (vllm/distributed/kv_events.py; golden: tests/sim/data/kv_events_blocksize128.json,
a vLLM 0.32 capture):

    EventBatch   = [ts: float, events: list, data_parallel_rank: int]        msgpack, positional envelope
    BlockStored  = block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name,
                   extra_keys=None, group_idx=None, kv_cache_spec_kind=None,
                   kv_cache_spec_sliding_window=None, locality=None, ownership=None, session_id=None
                   (the last three are new in vLLM 0.32)
    BlockRemoved = block_hashes, medium, group_idx=None, locality=None, ownership=None
    AllBlocksCleared = (no fields)

Event encodings (msgspec `tag=True, omit_defaults=True`):
    "map"   (vLLM >= PR #42892, what 0.32 emits): {"type": "BlockStored", "block_hashes": ..., ...}
    "array" (older `array_like=True`):              ["BlockStored", block_hashes, parent_block_hash, ...]
Fields that have a default and equal it are left out (trailing ones only, in the array form).
Block hashes are 64-bit ints by default (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1) or 32-byte digests.

ZMQ: PUB multipart (topic, seq as 8-byte big-endian, payload). Replay: a ROUTER socket takes
[identity, b"", start_seq(8-byte BE)] and answers [identity, b"", topic, seq(8-byte BE), payload] for
each buffered batch with seq >= start_seq, then the end marker [identity, b"", b"", (-1 as signed
8-byte BE), b""] (vLLM 0.32 `ZmqEventPublisher._service_replay`, checked against a live server in
docs/live.md; older releases left the topic frame out, and the decoder takes both).
A DEALER client sends [b"", start_seq]; a REQ just [start_seq].
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import msgspec

from eksinfer.errors import ConfigError

ExternalBlockHash: TypeAlias = int | bytes
Encoding = Literal["map", "array"]
MEDIUM_GPU = "GPU"
REPLAY_END_SEQ = -1
_END_SEQ_BYTES = REPLAY_END_SEQ.to_bytes(8, "big", signed=True)


@dataclass(frozen=True, slots=True)
class BlockStored:
    """Full blocks newly cached for one request; `token_ids` spans exactly those blocks."""

    block_hashes: tuple[ExternalBlockHash, ...]
    parent_block_hash: ExternalBlockHash | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_id: int | None = None
    medium: str | None = MEDIUM_GPU
    lora_name: str | None = None
    extra_keys: tuple[tuple[Any, ...] | None, ...] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None
    locality: str | None = None  # vLLM 0.32 additions, None unless a KV connector sets them
    ownership: str | None = None
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    """Cached blocks evicted from the pool."""

    block_hashes: tuple[ExternalBlockHash, ...]
    medium: str | None = MEDIUM_GPU
    group_idx: int | None = None
    locality: str | None = None
    ownership: str | None = None


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    """The whole prefix cache was reset."""


KVEvent: TypeAlias = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True, slots=True)
class EventBatch:
    ts: float
    events: tuple[KVEvent, ...]
    data_parallel_rank: int | None = None


# Field order and which fields have defaults (omitted when equal to None), as vLLM declares them.
_STORED_FIELDS = (
    ("block_hashes", False),
    ("parent_block_hash", False),
    ("token_ids", False),
    ("block_size", False),
    ("lora_id", False),
    ("medium", False),
    ("lora_name", False),
    ("extra_keys", True),
    ("group_idx", True),
    ("kv_cache_spec_kind", True),
    ("kv_cache_spec_sliding_window", True),
    ("locality", True),
    ("ownership", True),
    ("session_id", True),
)
_REMOVED_FIELDS = (
    ("block_hashes", False),
    ("medium", False),
    ("group_idx", True),
    ("locality", True),
    ("ownership", True),
)
_FIELDS: dict[str, tuple[tuple[str, bool], ...]] = {
    "BlockStored": _STORED_FIELDS,
    "BlockRemoved": _REMOVED_FIELDS,
    "AllBlocksCleared": (),
}

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def _wire_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_wire_value(v) for v in value]
    return value


def _event_to_wire(event: KVEvent, encoding: Encoding) -> Any:
    tag = type(event).__name__
    fields = _FIELDS[tag]
    if encoding == "map":
        out: dict[str, Any] = {"type": tag}
        for name, has_default in fields:
            value = getattr(event, name)
            if has_default and value is None:
                continue
            out[name] = _wire_value(value)
        return out
    values = [_wire_value(getattr(event, name)) for name, _ in fields]
    # omit_defaults with array_like drops only trailing fields equal to their default.
    keep = len(values)
    while keep > 0 and fields[keep - 1][1] and values[keep - 1] is None:
        keep -= 1
    return [tag, *values[:keep]]


def encode_batch(batch: EventBatch, encoding: Encoding = "map") -> bytes:
    """msgpack bytes of a batch as vLLM publishes it (`map`: vLLM 0.32 default; `array`: older vLLM)."""
    if encoding not in ("map", "array"):
        raise ValueError(f"encoding must be 'map' or 'array', got {encoding!r}")
    events = [_event_to_wire(e, encoding) for e in batch.events]
    envelope: list[Any] = [batch.ts, events]
    if batch.data_parallel_rank is not None:
        envelope.append(batch.data_parallel_rank)
    return _encoder.encode(envelope)


def _tupled(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value


def _build_event(tag: str, values: dict[str, Any]) -> KVEvent:
    if tag == "BlockStored":
        extra = values.get("extra_keys")
        return BlockStored(
            block_hashes=tuple(values["block_hashes"]),
            parent_block_hash=values.get("parent_block_hash"),
            token_ids=tuple(values["token_ids"]),
            block_size=int(values["block_size"]),
            lora_id=values.get("lora_id"),
            medium=values.get("medium"),
            lora_name=values.get("lora_name"),
            extra_keys=None if extra is None else tuple(_tupled(k) for k in extra),
            group_idx=values.get("group_idx"),
            kv_cache_spec_kind=values.get("kv_cache_spec_kind"),
            kv_cache_spec_sliding_window=values.get("kv_cache_spec_sliding_window"),
            locality=values.get("locality"),
            ownership=values.get("ownership"),
            session_id=values.get("session_id"),
        )
    if tag == "BlockRemoved":
        return BlockRemoved(
            block_hashes=tuple(values["block_hashes"]),
            medium=values.get("medium"),
            group_idx=values.get("group_idx"),
            locality=values.get("locality"),
            ownership=values.get("ownership"),
        )
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    raise ValueError(f"unknown KV event type {tag!r}")


def _decode_event(raw: Any) -> KVEvent:
    if isinstance(raw, dict):
        tag = raw.get("type")
        if not isinstance(tag, str):
            raise ValueError("KV event map has no 'type' tag")
        return _build_event(tag, raw)
    if isinstance(raw, list) and raw and isinstance(raw[0], str):
        tag = raw[0]
        fields = _FIELDS.get(tag)
        if fields is None:
            raise ValueError(f"unknown KV event type {tag!r}")
        if len(raw) - 1 > len(fields):
            raise ValueError(f"{tag} has {len(raw) - 1} fields, expected at most {len(fields)}")
        return _build_event(tag, {name: v for (name, _), v in zip(fields, raw[1:], strict=False)})
    raise ValueError(f"KV event is neither a tagged map nor a tagged array: {type(raw).__name__}")


def decode_batch(payload: bytes) -> EventBatch:
    """Decode a batch in either event encoding (and either envelope form); ValueError if malformed."""
    try:
        raw = _decoder.decode(payload)
    except msgspec.DecodeError as err:
        raise ValueError(f"KV event payload is not msgpack: {err}") from err
    if isinstance(raw, dict):
        ts, events, rank = raw.get("ts"), raw.get("events"), raw.get("data_parallel_rank")
    elif isinstance(raw, list) and len(raw) in (2, 3):
        ts, events = raw[0], raw[1]
        rank = raw[2] if len(raw) == 3 else None
    else:
        raise ValueError("KV event batch is neither [ts, events, rank] nor a map")
    if not isinstance(ts, int | float) or not isinstance(events, list):
        raise ValueError("KV event batch has a bad 'ts' or 'events' field")
    try:
        decoded = tuple(_decode_event(e) for e in events)
    except (KeyError, TypeError) as err:
        raise ValueError(f"KV event is missing or has a bad field: {err}") from err
    return EventBatch(ts=float(ts), events=decoded, data_parallel_rank=rank)


# --- ZMQ framing -----------------------------------------------------------------------------------------


def encode_frames(topic: str, seq: int, payload: bytes) -> tuple[bytes, bytes, bytes]:
    """The 3-frame PUB message: topic, 8-byte big-endian sequence number, msgpack batch."""
    return topic.encode("utf-8"), seq.to_bytes(8, "big"), payload


def decode_frames(frames: Sequence[bytes]) -> tuple[str, int, bytes]:
    """(topic, seq, payload) of a PUB message; ValueError unless it has 3 frames and an 8-byte seq."""
    if len(frames) != 3 or len(frames[1]) != 8:
        raise ValueError(f"expected 3 frames (topic, 8-byte seq, payload), got {len(frames)}")
    return bytes(frames[0]).decode("utf-8", "replace"), int.from_bytes(frames[1], "big"), bytes(frames[2])


def encode_replay_request(start_seq: int) -> bytes:
    """The replay request body: the first wanted sequence number, 8-byte big-endian."""
    return start_seq.to_bytes(8, "big")


def decode_replay_request(frames: Sequence[bytes]) -> tuple[bytes, int] | None:
    """(client identity, start seq) from a ROUTER-side request [identity, b"", seq]; None if malformed."""
    if len(frames) != 3 or len(frames[2]) != 8:
        return None
    return bytes(frames[0]), int.from_bytes(frames[2], "big")


def encode_replay_reply(
    identity: bytes, seq: int, payload: bytes, topic: bytes = b""
) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """One ROUTER-side reply frame set, as vLLM 0.32 sends it (the topic rides along).

    `seq == REPLAY_END_SEQ` with an empty payload ends the replay; its topic frame is empty.
    """
    if seq == REPLAY_END_SEQ:
        return identity, b"", b"", _END_SEQ_BYTES, b""
    return identity, b"", topic, seq.to_bytes(8, "big"), payload


def decode_replay_reply(frames: Sequence[bytes]) -> tuple[int, bytes]:
    """(seq, payload) from a reply seen by a DEALER or a REQ client.

    A DEALER sees the empty delimiter first, a REQ does not; vLLM 0.32 sends the topic before the
    sequence number, older releases did not. In all four layouts the sequence number is the next-to-last
    frame and the payload the last. Returns seq == REPLAY_END_SEQ for the end marker.
    """
    if not 2 <= len(frames) <= 4 or len(frames[-2]) != 8:
        raise ValueError(f"malformed replay reply with {len(frames)} frames")
    if bytes(frames[-2]) == _END_SEQ_BYTES:
        return REPLAY_END_SEQ, b""
    return int.from_bytes(frames[-2], "big"), bytes(frames[-1])


# --- --kv-events-config ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KVEventsConfig:
    """vLLM's `--kv-events-config` JSON (vllm/config/kv_events.py), with vLLM's defaults."""

    enable_kv_cache_events: bool = False
    publisher: str = "null"  # vLLM: unset means "zmq" when events are enabled, else "null"
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    max_queue_size: int = 100_000
    topic: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str) -> KVEventsConfig:
        """Parse the flag value; a ConfigError names the bad field."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"not valid JSON: {err.msg}", field="--kv-events-config") from err
        if not isinstance(raw, dict):
            raise ConfigError("must be a JSON object", field="--kv-events-config")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        types: dict[str, type | tuple[type, ...]] = {
            "enable_kv_cache_events": bool,
            "publisher": (str, type(None)),
            "endpoint": str,
            "replay_endpoint": (str, type(None)),
            "buffer_steps": int,
            "hwm": int,
            "max_queue_size": int,
            "topic": str,
        }
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key in known:
                if not isinstance(value, types[key]) or (isinstance(value, bool) and types[key] is int):
                    raise ConfigError(f"bad value {value!r}", field=f"--kv-events-config.{key}")
                values[key] = value
        if values.get("publisher") is None:
            values["publisher"] = "zmq" if values.get("enable_kv_cache_events") else "null"
        if values["publisher"] not in ("null", "zmq"):
            raise ConfigError("must be 'null' or 'zmq'", field="--kv-events-config.publisher")
        extra = {k: v for k, v in raw.items() if k not in known}
        return cls(**values, extra=extra)

    @property
    def enabled(self) -> bool:
        return self.enable_kv_cache_events and self.publisher == "zmq"


def offset_endpoint_port(endpoint: str | None, rank: int) -> str | None:
    """Endpoint for data-parallel rank `rank`: tcp port + rank, inproc suffix `_dp<rank>` (as vLLM does)."""
    if not endpoint or rank == 0:
        return endpoint
    if endpoint.startswith("inproc://"):
        return f"{endpoint}_dp{rank}"
    if endpoint.startswith("tcp://") and ":" in endpoint[len("tcp://") :]:
        base, _, port = endpoint.rpartition(":")
        return f"{base}:{int(port) + rank}"
    raise ConfigError(f"cannot offset endpoint {endpoint!r}; use tcp://host:port", field="endpoint")
