"""Tokenize a request the way the engine will, so prefix keys match the blocks the engine caches.

Modes (`routing.tokenizer.mode`):
    hf       a local Hugging Face tokenizer: `tokenizer.json` (the `tokenizers` library) and the chat template
             from `tokenizer_config.json`, rendered with jinja2 the way transformers' `apply_chat_template`
             does (sandboxed, trim_blocks, lstrip_blocks); chat prompts are then encoded without special
             tokens (the template writes them), completions with them, as vLLM's serving layer does.
    engine   the engine's own `POST /tokenize` (exact by construction, one loopback round trip per request).
    builtin  the simulator's deterministic tokenizer (`eksinfer.sim.tokenizer`), for eksinfer sims.
    approx   none: prefix matching falls back to character blocks (router-side approximate index).

Prompts given as token ids (`prompt: [1, 2, 3]`) are used as they are in every mode. Local tokenization of
long prompts runs in a worker thread (the router decides, by prompt length); short ones run inline because a
thread hop costs more than they do.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import msgspec

from eksinfer.errors import ConfigError
from eksinfer.gateway.scheduling.config import RoutingConfig
from eksinfer.gateway.upstream import UpstreamError, UpstreamPool

log = logging.getLogger(__name__)
_JSON = {"Content-Type": "application/json"}


def prompt_text(body: Mapping[str, Any]) -> str:
    """The request's prompt as text, for the approximate index and length estimates (not for the engine);
    empty for prompts given as token ids (those are keyed by token blocks instead)."""
    if "messages" in body:
        parts: list[str] = []
        for msg in body.get("messages") or []:
            if not isinstance(msg, Mapping):
                continue
            parts.append(str(msg.get("role", "")))
            parts.append(message_content(msg.get("content")))
        return "\n".join(parts)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        return str(prompt[0]) if prompt and isinstance(prompt[0], str) else ""
    return str(prompt)


def message_content(content: Any) -> str:
    """OpenAI content is a string or a list of parts; only text parts count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text"
        )
    return str(content)


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


def _special(value: Any) -> str:
    """tokenizer_config.json stores special tokens as strings or as {"content": ...} objects."""
    if isinstance(value, Mapping):
        return str(value.get("content", ""))
    return "" if value is None else str(value)


class HfTokenizer:
    """tokenizer.json + chat template from a local directory (loading is blocking: call `load` in a
    thread)."""

    name = "hf"
    local = True

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._tok: Any = None
        self._template: Any = None
        self._specials: dict[str, str] = {}

    def load(self) -> HfTokenizer:
        from tokenizers import Tokenizer

        from eksinfer.sim.tokenizer import load_tokenizer_file, read_tokenizer_config

        file = self.path / "tokenizer.json"
        if not file.is_file():
            raise ConfigError(f"no tokenizer.json in {self.path}", field="routing.tokenizer.path")
        field = "routing.tokenizer.path"
        self._tok = load_tokenizer_file(Tokenizer, file, field)
        cfg_file = self.path / "tokenizer_config.json"
        cfg = read_tokenizer_config(cfg_file, field) if cfg_file.is_file() else {}
        template = cfg.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
            template = named.get("default") or next(iter(named.values()), None)
        self._specials = {
            k: _special(cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")
        }
        if template:
            self._template = _compile_template(str(template))
        return self

    def render_chat(self, body: Mapping[str, Any]) -> str:
        if self._template is None:
            raise ConfigError("the tokenizer has no chat_template", field="routing.tokenizer.path")
        kwargs = dict(body.get("chat_template_kwargs") or {})
        return str(
            self._template.render(
                messages=body.get("messages") or [],
                tools=body.get("tools"),
                add_generation_prompt=bool(body.get("add_generation_prompt", True)),
                **self._specials,
                **kwargs,
            )
        )

    def encode_body(self, body: Mapping[str, Any]) -> list[int] | None:
        given = prompt_token_ids(body)
        if given is not None:
            return given
        if self._tok is None:
            self.load()
        if "messages" in body:
            text = self.render_chat(body)
            return list(self._tok.encode(text, add_special_tokens=False).ids)
        return list(self._tok.encode(prompt_text(body), add_special_tokens=True).ids)

    async def encode_remote(self, body: Mapping[str, Any], model: str, base_url: str) -> list[int] | None:
        return self.encode_body(body)


def _compile_template(source: str) -> Any:
    """A sandboxed jinja2 environment configured like transformers' chat-template renderer."""
    from datetime import datetime

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


class BuiltinTokenizer:
    """The simulator's tokenizer (`eksinfer.sim.tokenizer`: `encode_prompt`, `encode_chat`); exact for engines
    that are eksinfer simulators running their default tokenizer."""

    name = "builtin"
    local = True

    def __init__(self) -> None:
        try:
            from eksinfer.sim.tokenizer import BuiltinTokenizer as SimTokenizer
        except ImportError as err:  # the simulator part is optional at import time
            raise ConfigError(
                f"the builtin tokenizer is unavailable ({err})", field="routing.tokenizer.mode"
            ) from None
        self._tok = SimTokenizer()

    def encode_body(self, body: Mapping[str, Any]) -> list[int] | None:
        given = prompt_token_ids(body)
        if given is not None:
            return given
        if "messages" in body:
            return list(self._tok.encode_chat(body.get("messages") or []))
        return list(self._tok.encode_prompt(prompt_text(body)))

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
        if "messages" in body:
            payload["messages"] = body.get("messages")
            payload["add_generation_prompt"] = bool(body.get("add_generation_prompt", True))
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
        except (TimeoutError, UpstreamError, msgspec.DecodeError, KeyError, TypeError, ValueError) as err:
            self.failures += 1
            log.debug("tokenize on %s failed: %s", base_url, err)
            return None


def make_tokenizer(config: RoutingConfig, pool_factory: Callable[[], UpstreamPool]) -> PromptTokenizer:
    """The tokenizer for `routing.tokenizer.mode` (auto: hf with a path, else the engine's /tokenize)."""
    tc = config.tokenizer
    mode = tc.mode if tc.mode != "auto" else ("hf" if tc.path else "engine")
    if mode == "hf":
        if not tc.path:
            raise ConfigError("mode hf needs a tokenizer directory", field="routing.tokenizer.path")
        return HfTokenizer(tc.path)
    if mode == "builtin":
        return BuiltinTokenizer()
    if mode == "engine":
        return EngineTokenizer(pool_factory, tc.engine_timeout_s)
    return ApproxTokenizer()
