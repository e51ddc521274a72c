"""Read prompts to replay from a local file.

Accepted shapes (one JSON value per line for .jsonl, or one JSON array for .json):
  {"prompt": "...", "max_tokens"|"output_len": N}                 plain completions-style prompt
  {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   chat
  {"conversations": [{"from": "human"|"gpt"|"system", "value": "..."}, ...]}     ShareGPT
For chat and ShareGPT records the system message and the first user turn are replayed (every user turn with
`multi_turn`), each asking for as many tokens as the recorded answer that followed it (about 4 characters a
token).
Anything else is a ConfigError naming the file and line (or array index).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eksinfer import untrusted
from eksinfer.bench.prompts import estimate_tokens
from eksinfer.errors import ConfigError

_SHAREGPT_ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass(frozen=True, slots=True)
class ReplayTurn:
    text: str
    output_len: int | None = None  # the recorded answer's estimated length, when there is one


@dataclass(frozen=True, slots=True)
class ReplayPrompt:
    """One record: its system prompt and every user turn in order (single-turn replay uses the first)."""

    system: str
    turns: tuple[ReplayTurn, ...]


def _from_messages(messages: list[Any], where: str) -> ReplayPrompt:
    system = ""
    turns: list[ReplayTurn] = []
    for m in messages:
        if not isinstance(m, dict):
            raise ConfigError(f"{where}: each message must be an object")
        role = m.get("role") or _SHAREGPT_ROLE.get(str(m.get("from")), m.get("from"))
        text = m.get("content", m.get("value"))
        if not isinstance(text, str):
            raise ConfigError(f"{where}: a message has no text ('content' or 'value')")
        if role == "system" and not turns:
            system = text
        elif role == "user":
            turns.append(ReplayTurn(text))
        elif role == "assistant" and turns and turns[-1].output_len is None:
            turns[-1] = ReplayTurn(turns[-1].text, estimate_tokens(text) or None)
    if not turns:
        raise ConfigError(f"{where}: no user/human message to replay")
    return ReplayPrompt(system, tuple(turns))


def parse_record(obj: Any, where: str) -> ReplayPrompt:
    """One record of any accepted shape."""
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    if isinstance(obj.get("prompt"), str):
        out = obj.get("output_len", obj.get("max_tokens"))
        if out is not None and (not isinstance(out, int) or isinstance(out, bool) or out < 1):
            raise ConfigError(f"{where}: output_len/max_tokens must be a positive integer")
        return ReplayPrompt(str(obj.get("system", "")), (ReplayTurn(obj["prompt"], out),))
    for key in ("messages", "conversations"):
        if isinstance(obj.get(key), list):
            return _from_messages(obj[key], where)
    raise ConfigError(f"{where}: needs 'prompt' (string), 'messages' or 'conversations' (list)")


MAX_DATASET_BYTES = 1024**3  # replay datasets (ShareGPT dumps) run to hundreds of MB; a GB is refused


def read_replay(path: Path, max_prompts: int | None = None) -> list[ReplayPrompt]:
    """Every prompt of the file (or the first `max_prompts`); at least one, or a ConfigError."""
    text = untrusted.read_text(path, field=None, max_bytes=MAX_DATASET_BYTES, what="dataset ")
    stripped = text.lstrip()
    prompts: list[ReplayPrompt] = []
    if stripped.startswith("["):
        try:
            items = untrusted.load_json(text, where=str(path), field=None)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
        for i, obj in enumerate(items[:max_prompts] if max_prompts else items):
            prompts.append(parse_record(obj, f"{path}[{i}]"))
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if max_prompts is not None and len(prompts) >= max_prompts:
                break
            if not line.strip():
                continue
            try:
                obj = untrusted.load_json(line, where=f"{path}:{lineno}", field=None)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            prompts.append(parse_record(obj, f"{path}:{lineno}"))
    if not prompts:
        raise ConfigError(f"{path}: no prompts in the file")
    return prompts
