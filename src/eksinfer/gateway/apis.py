"""The vLLM OpenAI-server routes the gateway forwards, what each must carry, and how each is routed.

Generative routes (completions, chat, Responses) go through the configured routing profile: their prompt
decides which engine holds the KV blocks worth reusing. Pooling routes (embeddings, score, rerank) and the
tokenizer routes keep nothing in the KV cache between requests, so they use the `load` preset (queue
depth, in-flight tokens, KV usage) whatever the profile. Every route needs `model` (the gateway picks the
engines by it) and one of its `fields`; the body goes to the engine unchanged, on the same path.

The Responses API (vLLM `entrypoints/openai/responses`) renders `instructions` as a system message and
`input` (a string, or a list of message items) as the conversation, through the same chat template as
`/v1/chat/completions`; `as_chat` gives the router that view so prefix matching sees the same prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LOAD_PROFILE = "load"


@dataclass(frozen=True, slots=True)
class Api:
    """One forwarded route: the body fields it needs (any one of them) and its routing profile."""

    path: str
    fields: tuple[str, ...]
    profile: str | None = None  # None: the configured profile
    chat_like: bool = False  # Responses: route on `as_chat(body)`


APIS: tuple[Api, ...] = (
    Api("/v1/completions", ("prompt",)),
    Api("/v1/chat/completions", ("messages",)),
    Api("/v1/responses", ("input",), chat_like=True),
    Api("/v1/embeddings", ("input", "messages"), LOAD_PROFILE),
    Api("/v1/score", ("text_1", "queries", "data_1"), LOAD_PROFILE),
    Api("/v1/rerank", ("query",), LOAD_PROFILE),
    Api("/rerank", ("query",), LOAD_PROFILE),
    Api("/v2/rerank", ("query",), LOAD_PROFILE),
    Api("/tokenize", ("prompt", "messages"), LOAD_PROFILE),
    Api("/detokenize", ("tokens",), LOAD_PROFILE),
)


def as_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """A Responses request as the chat request vLLM renders it into (for routing, never forwarded)."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    elif isinstance(items, list):
        for item in items:
            if isinstance(item, Mapping) and isinstance(item.get("role"), str):
                messages.append({"role": item["role"], "content": _content(item.get("content"))})
    view = {k: v for k, v in body.items() if k not in ("input", "instructions")}
    view["messages"] = messages
    return view


def _content(content: Any) -> Any:
    """Responses content parts (`input_text`, `output_text`) as chat `text` parts."""
    if not isinstance(content, list):
        return content
    parts = []
    for part in content:
        if isinstance(part, Mapping) and part.get("type") in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text", "")})
    return parts
