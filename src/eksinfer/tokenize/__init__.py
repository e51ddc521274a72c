"""Tokenizers shared by the simulator and the gateway: one package, so both turn a request into the same
token ids (the gateway's prefix keys are the engine's cached blocks only if they do).

- `builtin`: the simulator's deterministic tokenizer (no files).
- `hf`: a local Hugging Face tokenizer directory, its chat template rendered by `chat`.
- `chat`: the jinja2 environment that renders chat templates as transformers does, and `message_text`,
  the one way a message's content is flattened to text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, Unpack

from eksinfer.tokenize.builtin import BUILTIN_VOCAB_SIZE, BuiltinTokenizer
from eksinfer.tokenize.chat import ChatOptions, Message, message_text
from eksinfer.tokenize.hf import HFTokenizer

__all__ = [
    "BUILTIN_VOCAB_SIZE",
    "BuiltinTokenizer",
    "ChatOptions",
    "HFTokenizer",
    "Message",
    "Tokenizer",
    "chat_options",
    "encode_chat_body",
    "load_tokenizer",
    "message_text",
]


class Tokenizer(Protocol):
    """What the engine (and the gateway) need from a tokenizer."""

    name: str
    vocab_size: int
    eos_token_id: int

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def apply_chat_template(self, messages: Sequence[Message], **options: Unpack[ChatOptions]) -> str: ...

    def encode_prompt(self, prompt: str) -> list[int]: ...

    def encode_chat(self, messages: Sequence[Message], **options: Unpack[ChatOptions]) -> list[int]: ...


def chat_options(body: Mapping[str, Any]) -> ChatOptions:
    """What vLLM hands a chat request's template besides the messages: the request's `tools`,
    `add_generation_prompt` and `chat_template_kwargs`."""
    return ChatOptions(
        add_generation_prompt=bool(body.get("add_generation_prompt", True)),
        tools=body.get("tools"),
        extra=body.get("chat_template_kwargs") or {},
    )


def encode_chat_body(tok: Tokenizer, body: Mapping[str, Any]) -> list[int]:
    """A chat request's prompt ids. The simulator and the gateway both call this, so a tool request
    tokenizes the same in both."""
    return tok.encode_chat(body.get("messages") or [], **chat_options(body))


def load_tokenizer(path: str | None) -> Tokenizer:
    """The built-in tokenizer for None or "builtin", else the HF tokenizer at `path` (blocking I/O)."""
    if path is None or path == "builtin":
        return BuiltinTokenizer()
    return HFTokenizer(path)
