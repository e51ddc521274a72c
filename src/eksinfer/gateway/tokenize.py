"""Tokenize a request the way the engine will, so prefix keys match the blocks the engine caches.

Modes (`routing.tokenizer.mode`):
    hf       a local Hugging Face tokenizer directory (`eksinfer.tokenize.hf`, the simulator's own): the chat
             template is rendered as transformers' `apply_chat_template` renders it, with the request's
             `tools` and `chat_template_kwargs`.
    engine   the engine's own `POST /tokenize` (exact by construction, one loopback round trip per request).
    builtin  the simulator's deterministic tokenizer (`eksinfer.tokenize.builtin`), for eksinfer sims.
    approx   none: prefix matching falls back to character blocks (router-side approximate index).

Prompts given as token ids (`prompt: [1, 2, 3]`) are used as they are in every mode. Local tokenization of
long prompts runs in a worker thread (the router decides, by prompt length); short ones run inline because a
thread hop costs more than they do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import msgspec

from eksinfer.errors import ConfigError
from eksinfer.gateway.scheduling.config import RoutingConfig
from eksinfer.gateway.upstream import EngineLinkError, UpstreamPool
from eksinfer.tokenize import BuiltinTokenizer, HFTokenizer, encode_chat_body, message_text

log = logging.getLogger(__name__)
_JSON = {"Content-Type": "application/json"}
_PATH_FIELD = "routing.tokenizer.path"


def prompt_text(body: Mapping[str, Any]) -> str:
    """The request's prompt as text, for the approximate index and length estimates (not for the engine);
    empty for prompts given as token ids (those are keyed by token blocks instead)."""
    if "messages" in body:
        parts: list[str] = []
        for msg in body.get("messages") or []:
            if not isinstance(msg, Mapping):
                continue
            parts.append(str(msg.get("role", "")))
            content = msg.get("content")
            parts.append(message_text(content) if isinstance(content, str | list | None) else str(content))
        return "\n".join(parts)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        return str(prompt[0]) if prompt and isinstance(prompt[0], str) else ""
    return str(prompt)


def prompt_token_ids(body: Mapping[str, Any]) -> list[int] | None:
    """Token ids given directly by a completions request (`prompt: [ints]` or `[[ints]]`), else None.

    Only the ends are type-checked: a full scan costs more than routing a 4k-token prompt, and the engine
    rejects a malformed list anyway.
    """
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], list):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and type(prompt[0]) is int and type(prompt[-1]) is int:
        return prompt
    return None


class PromptTokenizer(Protocol):
    """`local` tokenizers run synchronously (the router may move them to a thread); remote ones are async."""

    name: str
    local: bool

    def encode_body(self, body: Mapping[str, Any]) -> list[int] | None: ...

    async def encode_remote(self, body: Mapping[str, Any], model: str, base_url: str) -> list[int] | None: ...


class ApproxTokenizer:
    name = "approx"
    local = True

    def encode_body(self, body: Mapping[str, Any]) -> list[int] | None:
        return prompt_token_ids(body)

    async def encode_remote(self, body: Mapping[str, Any], model: str, base_url: str) -> list[int] | None:
        return prompt_token_ids(body)


class HfPromptTokenizer:
    """A request body through the shared HF tokenizer (`eksinfer.tokenize.hf`); loading is blocking: call
    `load` in a thread."""

    name = "hf"
    local = True

    def __init__(self, path: str) -> None:
        self.path = path
        self._tok: HFTokenizer | None = None

    def load(self) -> HfPromptTokenizer:
        self._tok = HFTokenizer(self.path, field=_PATH_FIELD)
        return self

    def encode_body(self, body: Mapping[str, Any]) -> list[int] | None:
        given = prompt_token_ids(body)
        if given is not None:
            return given
        tok = self._tok if self._tok is not None else self.load()._tok
        assert tok is not None
        if "messages" in body:
            return encode_chat_body(tok, body)
        return tok.encode_prompt(prompt_text(body))

    async def encode_remote(self, body: Mapping[str, Any], model: str, base_url: str) -> list[int] | None:
        return self.encode_body(body)


class BuiltinPromptTokenizer:
    """A request body through the simulator's tokenizer (`eksinfer.tokenize.builtin`); exact for engines
    that are eksinfer simulators running their default tokenizer."""

    name = "builtin"
    local = True

    def __init__(self) -> None:
        self._tok = BuiltinTokenizer()

    def encode_body(self, body: Mapping[str, Any]) -> list[int] | None:
        given = prompt_token_ids(body)
        if given is not None:
            return given
        if "messages" in body:
            return encode_chat_body(self._tok, body)
        return self._tok.encode_prompt(prompt_text(body))

    async def encode_remote(self, body: Mapping[str, Any], model: str, base_url: str) -> list[int] | None:
        return self.encode_body(body)


class EngineTokenizer:
    """The engine's `POST /tokenize` ({"model", "prompt"} or {"model", "messages",
    "add_generation_prompt"}), over the gateway's engine client (it is on every request's path)."""

    name = "engine"
    local = False

    def __init__(self, pool_factory: Callable[[], UpstreamPool], timeout_s: float) -> None:
        self._pool_factory = pool_factory
        self._timeout_s = timeout_s
        self.failures = 0

    def encode_body(self, body: Mapping[str, Any]) -> list[int] | None:
        return prompt_token_ids(body)

    async def encode_remote(self, body: Mapping[str, Any], model: str, base_url: str) -> list[int] | None:
        given = prompt_token_ids(body)
        if given is not None:
            return given
        payload: dict[str, Any] = {"model": model}
        if "messages" in body:  # what the chat template sees (vLLM's TokenizeChatRequest takes them all)
            payload["messages"] = body.get("messages")
            payload["add_generation_prompt"] = bool(body.get("add_generation_prompt", True))
            for name in ("tools", "chat_template_kwargs"):
                if body.get(name):
                    payload[name] = body[name]
        else:
            payload["prompt"] = prompt_text(body)
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._pool_factory().post(
                    base_url, "/tokenize", msgspec.json.encode(payload), _JSON
                )
                try:
                    raw = await response.read()
                finally:
                    response.close()
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            return [int(t) for t in msgspec.json.decode(raw)["tokens"]]
        except (TimeoutError, EngineLinkError, msgspec.DecodeError, KeyError, TypeError, ValueError) as err:
            self.failures += 1
            log.debug("tokenize on %s failed: %s", base_url, err)
            return None


def make_tokenizer(config: RoutingConfig, pool_factory: Callable[[], UpstreamPool]) -> PromptTokenizer:
    """The tokenizer for `routing.tokenizer.mode` (auto: hf with a path, else the engine's /tokenize)."""
    tc = config.tokenizer
    mode = tc.mode if tc.mode != "auto" else ("hf" if tc.path else "engine")
    if mode == "hf":
        if not tc.path:
            raise ConfigError("mode hf needs a tokenizer directory", field=_PATH_FIELD)
        return HfPromptTokenizer(tc.path)
    if mode == "builtin":
        return BuiltinPromptTokenizer()
    if mode == "engine":
        return EngineTokenizer(pool_factory, tc.engine_timeout_s)
    return ApproxTokenizer()
