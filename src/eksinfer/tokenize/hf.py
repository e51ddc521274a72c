"""A local Hugging Face tokenizer directory, used by the simulator (`--tokenizer DIR`) and the gateway
(`routing.tokenizer.mode: hf`).

`DIR/tokenizer.json` is loaded with the `tokenizers` library; the `chat_template` and special tokens of
`DIR/tokenizer_config.json` are rendered by `eksinfer.tokenize.chat`. Completions are encoded with special
tokens, chat prompts without (the template writes them), as vLLM's serving layer does. Loading is blocking
I/O: call it in a worker thread from async code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Unpack

from eksinfer import untrusted
from eksinfer.errors import ConfigError, UsageError
from eksinfer.tokenize.chat import (
    SPECIAL_TOKEN_KEYS,
    ChatOptions,
    ChatTemplate,
    Message,
    select_template,
    special_token_text,
)


class HFTokenizer:
    """`tokenizer.json` + chat template; `field` names the flag or config field that gave the path, for
    errors."""

    def __init__(self, path: str | Path, *, field: str = "--tokenizer") -> None:
        from tokenizers import Tokenizer as RawTokenizer

        root = Path(path)
        file = root / "tokenizer.json" if root.is_dir() else root
        if not file.is_file():
            raise ConfigError(f"no tokenizer.json at {root}", field=field)
        self._tok = load_tokenizer_file(RawTokenizer, file, field)
        config: dict[str, Any] = {}
        config_file = file.parent / "tokenizer_config.json"
        if config_file.is_file():
            config = read_tokenizer_config(config_file, field)
        self.name = str(root)
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        specials = {k: special_token_text(config.get(k)) for k in SPECIAL_TOKEN_KEYS}
        self.specials = {k: v for k, v in specials.items() if v is not None}
        eos = self.specials.get("eos_token")
        eos_id = self._tok.token_to_id(eos) if eos else None
        self.eos_token_id = int(eos_id) if eos_id is not None else -1
        source = select_template(config.get("chat_template"))
        self.template = _compile(source, self.specials, config_file, field) if source else None

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(token_ids), skip_special_tokens=True))

    def apply_chat_template(self, messages: Sequence[Message], **options: Unpack[ChatOptions]) -> str:
        if self.template is None:
            raise UsageError("the tokenizer has no chat template; use /v1/completions", field="messages")
        return self.template.render(messages, **options)

    def encode_prompt(self, prompt: str) -> list[int]:
        return self.encode(prompt, add_special_tokens=True)

    def encode_chat(self, messages: Sequence[Message], **options: Unpack[ChatOptions]) -> list[int]:
        """The rendered chat, without added special tokens: the template writes them."""
        text = self.apply_chat_template(messages, **options)
        return self.encode(text, add_special_tokens=False)


def _compile(source: str, specials: dict[str, str], file: Path, field: str) -> ChatTemplate:
    """The chat template, or one ConfigError line for one jinja2 cannot parse."""
    import jinja2

    try:
        return ChatTemplate(source, specials)
    except jinja2.TemplateError as err:
        line = f" (template line {err.lineno})" if isinstance(err, jinja2.TemplateSyntaxError) else ""
        raise ConfigError(f"{file}: chat_template does not parse{line}: {err.message}", field=field) from None


def load_tokenizer_file(factory: Any, file: Path, field: str) -> Any:
    """`tokenizers.Tokenizer.from_file` with its errors (a Rust panic message for a non-UTF-8 or
    malformed file) as one ConfigError line."""
    untrusted.read_text(file, field=field, max_bytes=untrusted.MAX_FILE_BYTES * 4)  # size and UTF-8 first
    try:
        return factory.from_file(str(file))
    except Exception as err:  # the library raises plain Exception subclasses from Rust
        raise ConfigError(
            f"{file} is not a tokenizer.json: {untrusted.one_line(str(err))}", field=field
        ) from None


def read_tokenizer_config(file: Path, field: str) -> dict[str, Any]:
    """`tokenizer_config.json` as a mapping, or one ConfigError line."""
    text = untrusted.read_text(file, field=field)
    try:
        config = untrusted.load_json(text, where=str(file), field=field)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{file} is not valid JSON: {err}", field=field) from None
    if not isinstance(config, dict):
        raise ConfigError(f"{file} is not a JSON object", field=field)
    return config
