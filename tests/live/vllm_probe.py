"""Decode KV-event payloads with vLLM's own classes and recompute their block hashes with vLLM's own function.

Runs inside the live venv (vllm importable; eksinfer is NOT imported here, so nothing of ours can mask a
mismatch). Input on stdin, JSON: {"payloads": [hex msgpack payload, ...], "hash_algo": "sha256_cbor",
"prompts": [[token ids], ...]}; PYTHONHASHSEED must be set as the publishing engine had it.
Output on stdout, JSON: {"none_hash_seed", "events": [{type, block_hashes, parent_block_hash, token_ids,
block_size, medium, recomputed}], "prompt_hashes": [[64-bit hash per full block], ...]}, where `recomputed` is
vLLM's `hash_block_tokens` chained over the event's own token_ids from its parent (parents are looked up among
the digests recomputed for earlier events, so the event stream must be captured from its start).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def main() -> int:
    import msgspec
    from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core import kv_cache_utils as kcu

    request = json.load(sys.stdin)
    hash_fn = get_hash_fn_by_name(request.get("hash_algo", "sha256_cbor"))
    kcu.init_none_hash(hash_fn)
    decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
    mask = (1 << 64) - 1
    digest_of: dict[int, bytes] = {}  # published 64-bit hash -> full digest, learned while recomputing
    events: list[dict[str, Any]] = []
    for payload_hex in request["payloads"]:
        batch = decoder.decode(bytes.fromhex(payload_hex))
        for ev in batch.events:
            if isinstance(ev, BlockStored):
                parent = None if ev.parent_block_hash is None else digest_of.get(ev.parent_block_hash)
                recomputed = []
                if ev.parent_block_hash is None or parent is not None:
                    for i in range(len(ev.token_ids) // ev.block_size):
                        block = ev.token_ids[i * ev.block_size : (i + 1) * ev.block_size]
                        parent = kcu.hash_block_tokens(hash_fn, parent, block, None)
                        short = int.from_bytes(parent, "big") & mask
                        digest_of[short] = parent
                        recomputed.append(short)
                events.append(
                    {
                        "type": "BlockStored",
                        "block_hashes": list(ev.block_hashes),
                        "parent_block_hash": ev.parent_block_hash,
                        "token_ids": list(ev.token_ids),
                        "block_size": ev.block_size,
                        "medium": ev.medium,
                        "recomputed": recomputed,
                    }
                )
            elif isinstance(ev, BlockRemoved):
                events.append({"type": "BlockRemoved", "block_hashes": list(ev.block_hashes)})
            elif isinstance(ev, AllBlocksCleared):
                events.append({"type": "AllBlocksCleared"})
    prompt_hashes = []
    for tokens in request.get("prompts", []):
        block_size = int(request["block_size"])
        parent = None
        chain = []
        for i in range(len(tokens) // block_size):
            parent = kcu.hash_block_tokens(hash_fn, parent, tokens[i * block_size : (i + 1) * block_size])
            chain.append(int.from_bytes(parent, "big") & mask)
        prompt_hashes.append(chain)
    out = {"none_hash_seed": kcu.get_none_hash_seed(), "events": events, "prompt_hashes": prompt_hashes}
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
