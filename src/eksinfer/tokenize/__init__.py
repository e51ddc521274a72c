"""Tokenizers shared by the simulator and the gateway: one package, so both turn a request into the same
token ids (the gateway's prefix keys are the engine's cached blocks only if they do).

- `builtin`: the simulator's deterministic tokenizer (no files).
- `hf`: a local Hugging Face tokenizer directory, its chat template rendered by `chat`.
- `chat`: the jinja2 environment that renders chat templates as transformers does, and `message_text`,
  the one way a message's content is flattened to text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from eksinfer.tokenize.builtin import BUILTIN_VOCAB_SIZE, BuiltinTokenizer
from eksinfer.tokenize.chat import Message, message_text
from eksinfer.tokenize.hf import HFTokenizer

__all__ = [
    "BUILTIN_VOCAB_SIZE",
    "BuiltinTokenizer",
    "HFTokenizer",
    "Message",
    "Tokenizer",
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

    def apply_chat_template(
        self, messages: Sequence[Message], *, add_generation_prompt: bool = True
    ) -> str: ...

    def encode_prompt(self, prompt: str) -> list[int]: ...

    def encode_chat(self, messages: Sequence[Message]) -> list[int]: ...


def load_tokenizer(path: str | None) -> Tokenizer:
    """The built-in tokenizer for None or "builtin", else the HF tokenizer at `path` (blocking I/O)."""
    if path is None or path == "builtin":
        return BuiltinTokenizer()
    return HFTokenizer(path)
