"""Encoder for the AWS event-stream binary framing that ConverseStream answers in.

One message (all integers big-endian):

    total_length u32 | headers_length u32 | prelude_crc u32    prelude: CRC32 of the first 8 bytes
    headers                                                   each: name_len u8 | name | type u8 | value
    payload                                                   JSON of the event's members
    message_crc u32                                           CRC32 of everything before it

Only string headers (type 7: value_len u16 | utf-8 bytes) are needed here. The decoder is botocore's own
(`botocore.eventstream.EventStreamBuffer`): the tests check every frame this writes against it.
"""

from __future__ import annotations

import binascii
import json
import struct
from typing import Any

_STRING = 7


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return (
        struct.pack("!B", len(raw_name)) + raw_name + struct.pack("!BH", _STRING, len(raw_value)) + raw_value
    )


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers."""
    raw_headers = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack("!II", total, len(raw_headers))
    prelude += struct.pack("!I", binascii.crc32(prelude))
    body = prelude + raw_headers + payload
    return body + struct.pack("!I", binascii.crc32(body))


def event_frame(event_type: str, members: dict[str, Any]) -> bytes:
    """A ConverseStream event (`messageStart`, `contentBlockDelta`, ...)."""
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_message(headers, json.dumps(members).encode())


def exception_frame(exception_type: str, message: str) -> bytes:
    """An in-stream error (`throttlingException`, `modelStreamErrorException`, ...) on a 200 response."""
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, json.dumps({"message": message}).encode())
