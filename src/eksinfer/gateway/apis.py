"""The vLLM OpenAI-server routes the gateway forwards, what each must carry, and how each is routed.

Generative routes (completions, chat, Responses) go through the configured routing profile: their prompt
decides which engine holds the KV blocks worth reusing. Pooling routes (embeddings, score, rerank) and the
tokenizer routes keep nothing in the KV cache between requests, so they use the `load` preset (queue
depth, in-flight tokens, KV usage) whatever the profile. Every route needs `model` (the gateway picks the
engines by it) and one of its `fields`; the body goes to the engine unchanged, on the same path.

The Responses API (vLLM `entrypoints/openai/responses`) renders `instructions` as a system message and
`input` (a string, or a list of message items) as the conversation, through the same chat template as
`/v1/chat/completions`; `as_chat` (shared with the simulator) gives the router that view, so prefix
matching sees that prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from eksinfer.tokenize.responses import as_chat

__all__ = ["APIS", "LOAD_PROFILE", "Api", "as_chat"]

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
