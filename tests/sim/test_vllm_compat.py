"""Optional: vLLM's own event classes decode the simulator's events and vLLM's own hash function agrees.

Skipped unless vLLM is importable (it is not in the default test environment; see
shared/reference/vllm-samples/README.md for installing the CPU build).
"""

from __future__ import annotations

import importlib

import msgspec
import pytest

from eksinfer.kvcache.events import EventBatch, encode_batch
from eksinfer.kvcache.hashing import block_digests, block_hashes
from eksinfer.sim.blocks import BlockPool, BlockTable

vllm = pytest.importorskip("vllm", reason="vLLM is not installed; this test compares with vLLM's own code")


def _sha256_cbor():  # type: ignore[no-untyped-def]
    for module in ("vllm.utils.hashing", "vllm.utils"):
        try:
            return importlib.import_module(module).sha256_cbor
        except (ImportError, AttributeError):
            continue
    pytest.skip("this vLLM has no sha256_cbor")


def test_vllm_hashes_match(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.v1.core import kv_cache_utils

    sha256_cbor = _sha256_cbor()
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    kv_cache_utils.init_none_hash(sha256_cbor)
    tokens = list(range(100, 148))
    parent = kv_cache_utils.NONE_HASH
    theirs = []
    for i in range(3):
        parent = kv_cache_utils.hash_block_tokens(sha256_cbor, parent, tokens[i * 16 : (i + 1) * 16], None)
        theirs.append(bytes(parent))
    assert theirs == block_digests(tokens, 16, seed="0")


@pytest.mark.parametrize("encoding", ["map", "array"])
def test_vllm_event_classes_decode_ours(encoding: str) -> None:
    from vllm.distributed import kv_events as vk

    pool = BlockPool(8, 16, emit_events=True)
    table = BlockTable()
    tokens = list(range(40))
    assert pool.allocate(table, 40, ())
    pool.cache_full_blocks(table, block_digests(tokens, 16), tokens, 40)
    payload = encode_batch(
        EventBatch(ts=1.0, events=tuple(pool.take_events()), data_parallel_rank=0), encoding
    )  # type: ignore[arg-type]
    if encoding == "array":
        pytest.skip("this vLLM encodes events as maps; its decoder does not read the older arrays")
    batch = msgspec.msgpack.decode(payload, type=vk.KVEventBatch)
    (event,) = batch.events
    assert isinstance(event, vk.BlockStored)
    assert list(event.block_hashes) == block_hashes(tokens, 16)
    assert list(event.token_ids) == tokens[:32]
