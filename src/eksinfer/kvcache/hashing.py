"""vLLM's chained prefix-cache block hashes, bit-exact (`--prefix-caching-hash-algo sha256_cbor` or `sha256`).

Algorithm (vLLM 0.32: vllm/v1/core/kv_cache_utils.py `hash_block_tokens`, `init_none_hash`,
`generate_block_hash_extra_keys`; vllm/utils/hashing.py `sha256_cbor`, `sha256`):

    H(x)     = sha256(cbor2.dumps(x, canonical=True))          sha256_cbor
             = sha256(pickle.dumps(x, HIGHEST_PROTOCOL))       sha256 (vLLM's default algorithm)
    root     = H(seed)        seed = $PYTHONHASHSEED, else "vllm-none-hash" (vLLM >= 0.32 for sha256*)
    digest_i = H((digest_{i-1} or root, tuple(tokens of block i), extra_keys_i))
    BlockHash_i = int.from_bytes(digest_i, "big") & (2**64 - 1)   (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1)

Only full blocks are hashed; chaining uses the full 32-byte digest, events publish the 64-bit projection.
`extra_keys_i` is None or a tuple of tagged keys in vLLM's order: `("lora", name, path)` on every block, then
`("cache_salt", salt)` on block 0 only. Events publish them untagged (`event_extra_keys`): `(name, salt)`.
Checked against a vLLM 0.32 capture kept in tests/sim/data (default `sha256`, no PYTHONHASHSEED:
tests/kvcache/test_hashing.py reproduces its published hashes). Multimodal and prompt-embeds keys are not
produced (text-only engines).

Cost: one CBOR encode (or pickle) and one sha256 per block, about 2.5 ms for 8,192 tokens at block size 16.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Literal, NewType

import cbor2

BlockHash = NewType("BlockHash", int)
"""The 64-bit block id vLLM publishes in KV events (last 8 bytes of the digest, big-endian)."""

BlockDigest = NewType("BlockDigest", bytes)
"""The full 32-byte sha256 digest that the next block chains on."""

ExtraKeys = tuple[Any, ...] | None
HashAlgo = Literal["sha256_cbor", "sha256"]

DEFAULT_HASH_SEED = "vllm-none-hash"  # vLLM 0.32 DEFAULT_NONE_HASH_SEED, used when PYTHONHASHSEED is unset
HASH_ALGOS: tuple[HashAlgo, ...] = ("sha256_cbor", "sha256")
_MASK64 = (1 << 64) - 1


def _cbor_bytes(obj: object) -> bytes:
    return cbor2.dumps(obj, canonical=True)


def _pickle_bytes(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


_SERIALIZERS: dict[str, Callable[[object], bytes]] = {"sha256_cbor": _cbor_bytes, "sha256": _pickle_bytes}


def _serializer(algo: str) -> Callable[[object], bytes]:
    try:
        return _SERIALIZERS[algo]
    except KeyError:
        raise ValueError(f"unknown hash algorithm {algo!r}; known: {', '.join(HASH_ALGOS)}") from None


@lru_cache(maxsize=64)
def root_digest(seed: str = DEFAULT_HASH_SEED, algo: HashAlgo = "sha256_cbor") -> BlockDigest:
    """vLLM's NONE_HASH: the parent of the first block, the hash of the seed string."""
    return BlockDigest(hashlib.sha256(_serializer(algo)(seed)).digest())


def to_block_hash(digest: bytes) -> BlockHash:
    """The 64-bit id vLLM publishes for a digest (`int.from_bytes(digest, "big") & (2**64 - 1)`)."""
    return BlockHash(int.from_bytes(digest, "big") & _MASK64)


def hash_block(
    parent: bytes,
    block_tokens: Sequence[int],
    extra_keys: ExtraKeys = None,
    *,
    algo: HashAlgo = "sha256_cbor",
) -> BlockDigest:
    """One chained block digest; `parent` is the previous block's digest or `root_digest(seed, algo)`."""
    return BlockDigest(hashlib.sha256(_serializer(algo)((parent, tuple(block_tokens), extra_keys))).digest())


def request_extra_keys(
    num_blocks: int,
    *,
    lora_name: str | None = None,
    lora_path: str | None = None,
    cache_salt: str | None = None,
) -> list[ExtraKeys]:
    """Per-block hash extra keys as vLLM 0.32's `generate_block_hash_extra_keys` builds them for text."""
    lora: list[tuple[Any, ...]] = [("lora", lora_name, lora_path or lora_name)] if lora_name else []
    keys: list[ExtraKeys] = []
    for i in range(num_blocks):
        parts = [*lora, ("cache_salt", cache_salt)] if cache_salt and i == 0 else lora
        keys.append(tuple(parts) if parts else None)
    return keys


def event_extra_keys(keys: ExtraKeys) -> ExtraKeys:
    """The untagged form KV events publish (vLLM `to_event_extra_keys`): names and salts bare, mm pairs."""
    if keys is None:
        return None
    return tuple(k[1:] if k[0] == "mm" else k[1] for k in keys)


def block_digests(
    token_ids: Sequence[int],
    block_size: int,
    *,
    parent: bytes | None = None,
    extra_keys: Sequence[ExtraKeys] | None = None,
    lora_name: str | None = None,
    lora_path: str | None = None,
    cache_salt: str | None = None,
    seed: str = DEFAULT_HASH_SEED,
    algo: HashAlgo = "sha256_cbor",
    start_block: int = 0,
) -> list[BlockDigest]:
    """Digests of the full blocks of `token_ids` from block `start_block` on.

    `parent` is the digest of block `start_block - 1` (None: the root of `seed`). `extra_keys` gives the
    tagged keys of every block of the sequence; otherwise they are built from lora_name/lora_path/cache_salt.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    num_blocks = len(token_ids) // block_size
    if extra_keys is None and (lora_name or cache_salt):
        extra_keys = request_extra_keys(
            num_blocks, lora_name=lora_name, lora_path=lora_path, cache_salt=cache_salt
        )
    if extra_keys is not None and len(extra_keys) < num_blocks:
        raise ValueError(f"extra_keys has {len(extra_keys)} entries for {num_blocks} full blocks")
    serialize = _serializer(algo)
    prev: bytes = root_digest(seed, algo) if parent is None else parent
    sha256 = hashlib.sha256
    tokens = token_ids if isinstance(token_ids, list) else list(token_ids)
    out: list[BlockDigest] = []
    for i in range(start_block, num_blocks):
        extra = extra_keys[i] if extra_keys is not None else None
        block = tuple(tokens[i * block_size : (i + 1) * block_size])
        prev = sha256(serialize((prev, block, extra))).digest()
        out.append(BlockDigest(prev))
    return out


def block_hashes(
    token_ids: Sequence[int],
    block_size: int,
    *,
    parent: bytes | None = None,
    extra_keys: Sequence[ExtraKeys] | None = None,
    lora_name: str | None = None,
    lora_path: str | None = None,
    cache_salt: str | None = None,
    seed: str = DEFAULT_HASH_SEED,
    algo: HashAlgo = "sha256_cbor",
) -> list[BlockHash]:
    """The 64-bit ids vLLM publishes for the full blocks of a token sequence (see `block_digests`)."""
    digests = block_digests(
        token_ids,
        block_size,
        parent=parent,
        extra_keys=extra_keys,
        lora_name=lora_name,
        lora_path=lora_path,
        cache_salt=cache_salt,
        seed=seed,
        algo=algo,
    )
    return [to_block_hash(d) for d in digests]


class BlockHasher:
    """Incremental hasher for one growing sequence (prompt, then generated tokens), as the engine needs it.

    Keeps the digests of the blocks hashed so far, so appending tokens hashes only the new full blocks.
    """

    __slots__ = ("_algo", "_digests", "_lora", "_salt", "_seed", "block_size")

    def __init__(
        self,
        block_size: int,
        *,
        seed: str = DEFAULT_HASH_SEED,
        algo: HashAlgo = "sha256_cbor",
        lora_name: str | None = None,
        lora_path: str | None = None,
        cache_salt: str | None = None,
    ) -> None:
        _serializer(algo)
        self.block_size = block_size
        self._seed = seed
        self._algo: HashAlgo = algo
        self._lora = (lora_name, lora_path)
        self._salt = cache_salt
        self._digests: list[BlockDigest] = []

    @property
    def digests(self) -> list[BlockDigest]:
        return self._digests

    def extra_keys(self, block_index: int) -> ExtraKeys:
        """The tagged hash extra keys of one block of this sequence."""
        lora_name, lora_path = self._lora
        if not lora_name and not self._salt:
            return None
        salt = self._salt if block_index == 0 else None
        return request_extra_keys(1, lora_name=lora_name, lora_path=lora_path, cache_salt=salt)[0]

    def update(self, token_ids: Sequence[int]) -> list[BlockDigest]:
        """Hash the not-yet-hashed full blocks of `token_ids` (the whole sequence so far); return them."""
        done = len(self._digests)
        num_blocks = len(token_ids) // self.block_size
        if num_blocks <= done:
            return []
        extra = None
        if self._lora[0] or self._salt:
            extra = [self.extra_keys(i) for i in range(num_blocks)]
        new = block_digests(
            token_ids,
            self.block_size,
            parent=self._digests[-1] if done else None,
            extra_keys=extra,
            seed=self._seed,
            algo=self._algo,
            start_block=done,
        )
        self._digests.extend(new)
        return new
