"""A Responses API request (`POST /v1/responses`) as the chat conversation vLLM renders it into.

vLLM 0.32 (`entrypoints/openai/responses`) puts `instructions` first as a system message, then `input`: a
string is one user message, a list holds message items whose content is a string or `input_text` /
`output_text` parts. The simulator generates from this view and the gateway routes on it, so both see the
prompt the engine prefills; `max_output_tokens` becomes `max_tokens`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["as_chat"]


def as_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """A Responses request as the chat request vLLM renders it into (`input` and `instructions` become
    `messages`; other fields are kept)."""
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
    view = {k: v for k, v in body.items() if k not in ("input", "instructions", "max_output_tokens")}
    if "max_output_tokens" in body:
        view["max_tokens"] = body["max_output_tokens"]
    view["messages"] = messages
    return view


def _content(content: Any) -> Any:
    """Responses content parts (`input_text`, `output_text`) as chat `text` parts; media kept as they are
    (the chat checks answer them)."""
    if not isinstance(content, list):
        return content
    parts = []
    for part in content:
        if isinstance(part, Mapping) and part.get("type") in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text", "")})
        elif isinstance(part, Mapping) and part.get("type") == "input_image":
            parts.append({"type": "image_url", "image_url": {"url": part.get("image_url", "")}})
        elif isinstance(part, Mapping) and part.get("type") == "input_audio":
            parts.append({"type": "input_audio", "input_audio": part.get("input_audio")})
    return parts
