"""Prefix-match data shared by the prefix-aware plugins, computed once per request and kept in its
annotations under the keys declared in scheduling.data.

The router fills BLOCK_KEYS (token-block keys per block size) off the event loop before scheduling when the
prompt is long; these helpers compute anything missing inline (cheap for short prompts) and memoise it, so two
scorers in one profile never hash or walk the index twice. They also write MATCHED_TOKENS, the predicted
cached prompt tokens per endpoint (precise when the request has token ids, else approximate blocks), which
the router reads for the decision's reason and predicted hit; and `speculate`, which the prefix plugins call
from `on_routed`, indexes the routed prompt's blocks once per request.
"""

from __future__ import annotations

from collections.abc import Sequence

from eksinfer.gateway.scheduling.data import (
    APPROX_KEYS,
    APPROX_MATCH,
    BLOCK_KEYS,
    CACHE_SALT,
    MATCHED_TOKENS,
    PRECISE_MATCH,
    SPECULATED,
)
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
    cache = BLOCK_KEYS.setdefault(request, dict)
    keys = cache.get(block_size)
    if keys is None:
        if request.prompt_token_ids is None:
            return None
        ids = request.prompt_token_ids
        num_blocks = min(len(ids) // block_size, MAX_PREFIX_BLOCKS)
        extras = request_extra_keys(num_blocks, request.lora, CACHE_SALT.get(request))
        keys = cache[block_size] = chain_keys(ids, block_size, extra_keys=extras, max_blocks=num_blocks)
    return keys


def precise_matches(
    request: RoutingRequest, endpoints: Sequence[EndpointState], deps: PluginDeps
) -> dict[str, int] | None:
    """Matched prompt tokens per endpoint from the event-fed index; None when the request has no tokens."""
    cached = PRECISE_MATCH.get(request)
    if cached is not None and all(ep.id in cached for ep in endpoints):
        return cached
    if request.prompt_token_ids is None:
        return None
    result: dict[str, int] = dict(cached or {})
    for ep in endpoints:
        size = endpoint_block_size(ep, deps)
        keys = request_block_keys(request, size) or []
        result[ep.id] = deps.index.match(ep.id, keys) * size
    PRECISE_MATCH.put(request, result)
    MATCHED_TOKENS.put(request, result)
    return result


def approx_request_keys(request: RoutingRequest, deps: PluginDeps, *, use_tokens: bool) -> list[BlockKey]:
    """Keys for the router-side approximate index: token blocks when token ids exist and `use_tokens`, else
    character blocks of `block_size * 4` characters seeded by the model (and LoRA) name."""
    keys: list[BlockKey] | None = APPROX_KEYS.get(request)
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
        APPROX_KEYS.put(request, keys)
    return keys


def approx_matches(
    request: RoutingRequest, endpoints: Sequence[EndpointState], deps: PluginDeps, *, use_tokens: bool
) -> tuple[dict[str, int], int]:
    """Matched blocks per endpoint in the approximate index, and the request's block count."""
    keys = approx_request_keys(request, deps, use_tokens=use_tokens)
    cached = APPROX_MATCH.setdefault(request, dict)
    for ep in endpoints:
        if ep.id not in cached:
            cached[ep.id] = deps.approx_index.match(ep.id, keys)
    if PRECISE_MATCH.get(request) is None:  # precise beats approximate, whichever plugin ran first
        MATCHED_TOKENS.put(request, {eid: n * deps.block_size for eid, n in cached.items()})
    return cached, len(keys)


def hash_request(request: RoutingRequest, block_sizes: Sequence[int]) -> None:
    """Compute the request's key chain for every block size its candidates use (cached in annotations)."""
    for size in block_sizes:
        request_block_keys(request, size)


def speculate(request: RoutingRequest, endpoint: EndpointState, deps: PluginDeps) -> None:
    """Index the routed prompt's blocks on the chosen endpoint, once per request whichever prefix plugins
    call it: token blocks in the event-fed index with a short TTL (the engine's events confirm them), and the
    approximate keys, when a plugin computed them, in the router-side index."""
    done = SPECULATED.setdefault(request, set)
    if endpoint.id in done:
        return
    done.add(endpoint.id)
    if request.prompt_token_ids is not None:
        keys = request_block_keys(request, endpoint_block_size(endpoint, deps))
        if keys:
            deps.index.insert(endpoint.id, keys, ttl_s=deps.speculative_ttl_s)
    approx_keys = APPROX_KEYS.get(request)
    if approx_keys:
        deps.approx_index.insert(endpoint.id, approx_keys, ttl_s=None)
