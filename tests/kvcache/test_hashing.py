"""vLLM block hashes: CBOR bytes written out by hand (RFC 8949 major types), and a real vLLM 0.32 capture."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from eksinfer.kvcache.hashing import (
    DEFAULT_HASH_SEED,
    BlockHasher,
    block_digests,
    block_hashes,
    event_extra_keys,
    request_extra_keys,
    root_digest,
    to_block_hash,
)

GOLDEN = Path(__file__).parents[1] / "sim" / "data" / "kv_events_blocksize128.json"  # vLLM 0.32 capture


def _uint(n: int) -> bytes:
    """CBOR major type 0 header for a non-negative int, written from the spec."""
    if n < 24:
        return bytes([n])
    if n < 256:
        return bytes([0x18, n])
    if n < 65536:
        return b"\x19" + n.to_bytes(2, "big")
    return b"\x1a" + n.to_bytes(4, "big")


def _array_header(n: int) -> bytes:
    return bytes([0x80 + n]) if n < 24 else bytes([0x98, n])


def _hand_block(parent: bytes, tokens: list[int]) -> bytes:
    # [parent(bstr 32), [tokens...], null]
    body = (
        b"\x83" + b"\x58\x20" + parent + _array_header(len(tokens)) + b"".join(map(_uint, tokens)) + b"\xf6"
    )
    return hashlib.sha256(body).digest()


def test_root_is_sha256_of_cbor_seed_string() -> None:
    # CBOR text string "0" = 0x61 0x30
    assert root_digest("0") == hashlib.sha256(b"\x61\x30").digest()
    assert root_digest("42") == hashlib.sha256(b"\x62\x34\x32").digest()


def test_first_blocks_match_hand_encoded_cbor() -> None:
    tokens = [1, 2, 3, 30, 300, 70000, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, *list(range(100, 116)), 9, 9]
    root = hashlib.sha256(b"\x61\x30").digest()
    d0 = _hand_block(root, tokens[:16])
    d1 = _hand_block(d0, tokens[16:32])
    assert block_digests(tokens, 16, seed="0") == [d0, d1]  # the trailing 2 tokens are not a full block
    assert block_hashes(tokens, 16, seed="0") == [
        int.from_bytes(d0[-8:], "big"),
        int.from_bytes(d1[-8:], "big"),
    ]


def test_int_projection_is_low_64_bits_big_endian() -> None:
    digest = bytes(range(32))
    assert to_block_hash(digest) == int.from_bytes(bytes(range(24, 32)), "big")


def test_only_full_blocks_and_empty() -> None:
    assert block_hashes(list(range(15)), 16) == []
    assert len(block_hashes(list(range(48)), 16)) == 3


def test_extra_keys_are_vllm_032_tagged_keys() -> None:
    # generate_block_hash_extra_keys: ("lora", name, path) on every block, ("cache_salt", salt) on block 0
    keys = request_extra_keys(3, lora_name="sql", lora_path="/a/sql", cache_salt="s")
    assert keys == [
        (("lora", "sql", "/a/sql"), ("cache_salt", "s")),
        (("lora", "sql", "/a/sql"),),
        (("lora", "sql", "/a/sql"),),
    ]
    assert request_extra_keys(2) == [None, None]
    assert request_extra_keys(1, cache_salt="s") == [(("cache_salt", "s"),)]
    # events publish them untagged (to_event_extra_keys)
    assert event_extra_keys(keys[0]) == ("sql", "s")
    assert event_extra_keys(None) is None
    tokens = list(range(32))
    assert block_hashes(tokens, 16) != block_hashes(tokens, 16, lora_name="sql", lora_path="/a/sql")
    assert block_hashes(tokens, 16, lora_name="sql", lora_path="/a") != block_hashes(
        tokens, 16, lora_name="sql", lora_path="/b"
    )
    root = root_digest("0")
    expect0 = hashlib.sha256(cbor2.dumps((root, tuple(range(16)), keys[0]), canonical=True)).digest()
    got = block_digests(tokens, 16, lora_name="sql", lora_path="/a/sql", cache_salt="s", seed="0")
    assert got[0] == expect0
    salted = block_digests(tokens, 16, cache_salt="s")
    assert salted[0] != block_digests(tokens, 16)[0]


def test_reproduces_the_vllm_032_capture() -> None:
    """The golden capture ran vLLM 0.32 with its default algorithm (sha256 over pickle) and no PYTHONHASHSEED,
    so its root is the hash of "vllm-none-hash"; the published ids must come out exactly."""
    capture = json.loads(GOLDEN.read_text())[0]["payload"][1][0]
    assert DEFAULT_HASH_SEED == "vllm-none-hash"
    assert block_hashes(capture["token_ids"], 128, algo="sha256") == capture["block_hashes"]
    assert block_hashes(capture["token_ids"], 128, algo="sha256", seed="0") != capture["block_hashes"]


def test_pickle_algorithm_root_and_chain() -> None:
    root = hashlib.sha256(pickle.dumps("0", protocol=pickle.HIGHEST_PROTOCOL)).digest()
    assert root_digest("0", "sha256") == root
    d0 = hashlib.sha256(
        pickle.dumps((root, tuple(range(4)), None), protocol=pickle.HIGHEST_PROTOCOL)
    ).digest()
    assert block_digests(list(range(5)), 4, seed="0", algo="sha256") == [d0]


def test_seed_changes_every_hash() -> None:
    tokens = list(range(32))
    a, b = block_hashes(tokens, 16, seed="0"), block_hashes(tokens, 16, seed="1")
    assert not set(a) & set(b)


def test_parent_continues_chain() -> None:
    tokens = list(range(64))
    full = block_digests(tokens, 16)
    tail = block_digests(tokens[32:], 16, parent=full[1])
    assert tail == full[2:]


def test_incremental_hasher_equals_batch() -> None:
    tokens = list(range(1000, 1100))
    hasher = BlockHasher(16)
    new: list[bytes] = []
    for end in (5, 16, 17, 40, 100):
        new.extend(hasher.update(tokens[:end]))
    assert new == block_digests(tokens, 16)
    assert hasher.digests == new


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**20), min_size=0, max_size=80), st.sampled_from([4, 16]))
def test_matches_hand_encoding(tokens: list[int], block_size: int) -> None:
    parent = hashlib.sha256(b"\x61\x30").digest()
    expect = []
    for i in range(len(tokens) // block_size):
        parent = _hand_block(parent, tokens[i * block_size : (i + 1) * block_size])
        expect.append(parent)
    assert block_digests(tokens, block_size, seed="0") == expect
