"""Tokenizer orchestration for the router: loads the tokenizer in the background, and fills a request's
token ids and block keys before scheduling, inline when the prompt is short and in a worker thread when long.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from eksinfer.gateway.routing.tasks import TaskSet
from eksinfer.gateway.scheduling.config import TokenizerConfig
from eksinfer.gateway.scheduling.framework import EndpointState, RoutingRequest
from eksinfer.gateway.scheduling.prefix import hash_request
from eksinfer.gateway.tokenize import EngineTokenizer, HfPromptTokenizer, PromptTokenizer
from eksinfer.gateway.upstream import UpstreamPool

log = logging.getLogger(__name__)

# Key chains longer than this are hashed in a worker thread: 16k tokens take about 0.5 ms inline (measured
# 0.24 ms per 8,192 tokens at block size 16 on this machine), about what a thread hop costs.
HASH_OFFLOAD_TOKENS = 16384


class PromptTokens:
    """Owns the tokenizer, its background load and the connections of the engine tokenizer."""

    def __init__(
        self,
        config: TokenizerConfig,
        tasks: TaskSet,
        build: Callable[[Callable[[], UpstreamPool]], PromptTokenizer],
    ) -> None:
        """`build` makes the tokenizer, given this object's engine connections (opened on first use)."""
        self.config = config
        self._tasks = tasks
        self._pool: UpstreamPool | None = None
        self._ready: asyncio.Task[Any] | None = None
        self.failures = 0
        self.tokenizer = build(self.engine_pool)

    def engine_pool(self) -> UpstreamPool:
        """Connections for the engine tokenizer's `/tokenize` calls, opened on first use."""
        if self._pool is None:
            self._pool = UpstreamPool(connect_timeout_s=self.config.engine_timeout_s)
        return self._pool

    def start(self) -> None:
        """Load a local HF tokenizer in a worker thread; routing waits for it on first use."""
        if isinstance(self.tokenizer, HfPromptTokenizer) and self._ready is None:
            self._ready = self._tasks.spawn(asyncio.to_thread(self.tokenizer.load), name="tokenizer load")

    async def stop(self) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
        self._ready = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _usable(self) -> bool:
        task = self._ready
        return task is None or (task.done() and not task.cancelled() and task.exception() is None)

    async def prepare(
        self,
        request: RoutingRequest,
        body: Mapping[str, Any],
        candidates: Sequence[EndpointState],
        block_sizes: Sequence[int],
    ) -> None:
        """Tokenize and hash the prompt for every block size the candidates use."""
        if self._ready is not None and not self._ready.done():
            try:
                await asyncio.shield(self._ready)
            except Exception as err:  # a broken tokenizer directory degrades to approximate matching
                log.warning("tokenizer failed to load: %s", err)
        if request.prompt_token_ids is not None:  # ids given: only the key chain (about 0.03 us per token)
            if len(request.prompt_token_ids) > HASH_OFFLOAD_TOKENS:
                await asyncio.to_thread(hash_request, request, block_sizes)
            else:
                hash_request(request, block_sizes)
            return
        tok = self.tokenizer
        long_prompt = len(request.prompt_text) > self.config.offload_chars
        if tok.local and self._usable():
            if long_prompt:
                await asyncio.to_thread(_tokenize_and_hash, tok, body, request, block_sizes)
            else:
                _tokenize_and_hash(tok, body, request, block_sizes)
        elif not tok.local:
            ids = await tok.encode_remote(body, request.model, _pick_tokenize_url(candidates))
            request.prompt_token_ids = ids
            if ids is not None and len(ids) > HASH_OFFLOAD_TOKENS:
                await asyncio.to_thread(hash_request, request, block_sizes)
        if request.prompt_token_ids is None:
            self.failures += isinstance(tok, EngineTokenizer)


def _pick_tokenize_url(candidates: Sequence[EndpointState]) -> str:
    """Any healthy endpoint tokenizes identically; take the one with the least in-flight work."""
    healthy = [ep for ep in candidates if ep.healthy] or list(candidates)
    return min(healthy, key=lambda ep: ep.inflight_requests).url


def _tokenize_and_hash(
    tok: PromptTokenizer, body: Mapping[str, Any], request: RoutingRequest, sizes: Sequence[int]
) -> None:
    """CPU-bound part of routing (tokenizer + key chain): runs inline or in a worker thread."""
    try:
        request.prompt_token_ids = tok.encode_body(body)
    except Exception as err:  # a template error on odd input must not fail the request: route approximately
        log.debug("tokenization failed, routing approximately: %s", err)
        request.prompt_token_ids = None
    if request.prompt_token_ids is not None:
        hash_request(request, sizes)
