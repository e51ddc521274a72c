"""A Responses API request (`POST /v1/responses`) as the chat conversation vLLM renders it into.

vLLM 0.32 (`entrypoints/openai/responses`) puts `instructions` first as a system message, then `input`: a
string is one user message, a list holds message items whose content is a string or `input_text` /
`output_text` parts, function calls and their outputs. The simulator generates from this view and the gateway
routes on it, so both see the prompt the engine prefills; `max_output_tokens` becomes `max_tokens`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["as_chat"]


def as_chat(
    body: Mapping[str, Any],
    history: list[dict[str, Any]] | None = None,
    previous_output: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A Responses request as the chat request vLLM renders it into (`input` and `instructions` become
    `messages`; other fields are kept). With `previous_response_id`, vLLM puts the stored conversation of
    that response (`history`, its system messages left out) and the text of its output messages
    (`previous_output`; function calls are not carried over) between the instructions and the input."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    messages += [m for m in history or () if m.get("role") != "system"]
    for out in previous_output or ():
        if out.get("type") == "message":
            messages += [{"role": "assistant", "content": part["text"]} for part in out.get("content", ())]
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    elif isinstance(items, list):
        for item in items:
            if isinstance(item, Mapping):
                _add_item(messages, item)
    view = {k: v for k, v in body.items() if k not in ("input", "instructions", "max_output_tokens")}
    if "max_output_tokens" in body:
        view["max_tokens"] = body["max_output_tokens"]
    view["messages"] = messages
    return view


def _add_item(messages: list[dict[str, Any]], item: Mapping[str, Any]) -> None:
    """One input item as vLLM adds it: a function call joins the assistant message before it (or opens
    one), a function call's output is a `tool` message, a message item is a message."""
    kind = item.get("type")
    if kind == "function_call":
        call = {
            "id": item.get("call_id"),
            "type": "function",
            "function": {"name": item.get("name"), "arguments": item.get("arguments")},
        }
        last = messages[-1] if messages else None
        if last is not None and last.get("role") == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "tool_calls": [call]})
    elif kind == "function_call_output":
        messages.append({"role": "tool", "content": item.get("output"), "tool_call_id": item.get("call_id")})
    elif isinstance(item.get("role"), str):
        messages.append({"role": item["role"], "content": _content(item.get("content"))})


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
