"""Prefix-match data shared by the prefix-aware plugins, computed once per request and cached in its
annotations.

The router fills `block_keys` (token-block keys per block size) off the event loop before scheduling when the
prompt is long; these helpers compute anything missing inline (cheap for short prompts) and memoise it, so two
scorers in one profile never hash or walk the index twice. Annotation keys:

    block_keys      {block_size: [key, ...]}   keys of the request's full token blocks (index.chain_keys)
    precise_match   {endpoint_id: matched_tokens} from the event-fed index (speculative entries included)
    approx_keys     [key, ...]                  character-block or token-block keys for the router-side index
    approx_match    {endpoint_id: matched_blocks}
"""

from __future__ import annotations

from collections.abc import Sequence

from eksinfer.gateway.scheduling.framework import EndpointState, RoutingRequest
from eksinfer.gateway.scheduling.registry import PluginDeps
from eksinfer.kvcache.index import BlockKey, chain_keys, request_extra_keys, text_keys

# llm-d's approximate producer: 4 characters per token (approximateprefix/hashing.go,
# averageCharactersPerToken).
CHARS_PER_TOKEN = 4
# Cap on the blocks hashed and matched per request (llm-d maxPrefixBlocksToMatch default 256 at 16 tokens;
# 2048 x 16 = 32k tokens covers typical long system prompts at about 1 us per block in Python).
MAX_PREFIX_BLOCKS = 2048


def prompt_tokens(request: RoutingRequest) -> int:
    """Prompt length in tokens: exact when tokenized, else characters / 4."""
    if request.prompt_token_ids is not None:
        return len(request.prompt_token_ids)
    return max(1, len(request.prompt_text) // CHARS_PER_TOKEN)


def endpoint_block_size(endpoint: EndpointState, deps: PluginDeps) -> int:
    """The engine's block size: scraped from `vllm:cache_config_info`, else learned from its events."""
    return endpoint.block_size or deps.index.block_size(endpoint.id) or deps.block_size


def request_block_keys(request: RoutingRequest, block_size: int) -> list[BlockKey] | None:
    """Token-block keys of the request for one block size (None without token ids)."""
    cache: dict[int, list[BlockKey]] = request.annotations.setdefault("block_keys", {})
    keys = cache.get(block_size)
    if keys is None:
        if request.prompt_token_ids is None:
            return None
        ids = request.prompt_token_ids
        num_blocks = min(len(ids) // block_size, MAX_PREFIX_BLOCKS)
        extras = request_extra_keys(num_blocks, request.lora, request.annotations.get("cache_salt"))
        keys = cache[block_size] = chain_keys(ids, block_size, extra_keys=extras, max_blocks=num_blocks)
    return keys


def precise_matches(
    request: RoutingRequest, endpoints: Sequence[EndpointState], deps: PluginDeps
) -> dict[str, int] | None:
    """Matched prompt tokens per endpoint from the event-fed index; None when the request has no tokens."""
    cached: dict[str, int] | None = request.annotations.get("precise_match")
    if cached is not None and all(ep.id in cached for ep in endpoints):
        return cached
    if request.prompt_token_ids is None:
        return None
    result: dict[str, int] = dict(cached or {})
    for ep in endpoints:
        size = endpoint_block_size(ep, deps)
        keys = request_block_keys(request, size) or []
        result[ep.id] = deps.index.match(ep.id, keys) * size
    request.annotations["precise_match"] = result
    return result


def approx_request_keys(request: RoutingRequest, deps: PluginDeps, *, use_tokens: bool) -> list[BlockKey]:
    """Keys for the router-side approximate index: token blocks when token ids exist and `use_tokens`, else
    character blocks of `block_size * 4` characters seeded by the model (and LoRA) name."""
    keys: list[BlockKey] | None = request.annotations.get("approx_keys")
    if keys is None:
        size = deps.block_size
        ids = request.prompt_token_ids
        if ids is not None and (use_tokens or not request.prompt_text):
            keys = request_block_keys(request, size) or []
        else:
            salt = f"{request.model}\x00{request.lora or ''}"
            keys = text_keys(
                request.prompt_text, size * CHARS_PER_TOKEN, salt=salt, max_blocks=MAX_PREFIX_BLOCKS
            )
        request.annotations["approx_keys"] = keys
    return keys


def approx_matches(
    request: RoutingRequest, endpoints: Sequence[EndpointState], deps: PluginDeps, *, use_tokens: bool
) -> tuple[dict[str, int], int]:
    """Matched blocks per endpoint in the approximate index, and the request's block count."""
    keys = approx_request_keys(request, deps, use_tokens=use_tokens)
    cached: dict[str, int] = request.annotations.setdefault("approx_match", {})
    for ep in endpoints:
        if ep.id not in cached:
            cached[ep.id] = deps.approx_index.match(ep.id, keys)
    return cached, len(keys)


def hash_request(request: RoutingRequest, block_sizes: Sequence[int]) -> None:
    """Compute the request's key chain for every block size its candidates use (cached in annotations)."""
    for size in block_sizes:
        request_block_keys(request, size)
