"""Bedrock Converse answers -> OpenAI `chat.completion` and `chat.completion.chunk` dicts: pure, no I/O.

    stopReason                     finish_reason
    end_turn, stop_sequence        stop
    max_tokens,                    length
    model_context_window_exceeded  length
    tool_use                       tool_calls
    guardrail_intervened,          content_filter
    content_filtered
    malformed_model_output,        stop   (the model ended; what it wrote is passed on as it is)
    malformed_tool_use, unknown

Usage: Bedrock counts cache reads and writes apart from `inputTokens`; OpenAI's `prompt_tokens` counts every
prompt token, so prompt_tokens = inputTokens + cacheReadInputTokens + cacheWriteInputTokens and
`prompt_tokens_details.cached_tokens` = cacheReadInputTokens.

Streams: `StreamTranslator.feed(event)` turns one ConverseStream event into zero or more chunks. The role
rides on the first chunk that carries content, so nothing reaches the client before the model has produced
something: an error before that point can still be retried or sent to another tier unseen. Tool calls are
numbered by their order among tool calls (OpenAI's `index`), not by Converse's `contentBlockIndex`.
"""

from __future__ import annotations

import json
from typing import Any

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}


def finish_reason(stop_reason: str | None) -> str:
    return FINISH_REASONS.get(stop_reason or "", "stop")


def usage(bedrock: dict[str, Any]) -> dict[str, Any]:
    """OpenAI usage for a Converse `usage` block."""
    read = int(bedrock.get("cacheReadInputTokens") or 0)
    write = int(bedrock.get("cacheWriteInputTokens") or 0)
    prompt = int(bedrock.get("inputTokens") or 0) + read + write
    completion = int(bedrock.get("outputTokens") or 0)
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if read or write:
        out["prompt_tokens_details"] = {"cached_tokens": read}
    return out


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": block["toolUseId"],
        "type": "function",
        "function": {"name": block["name"], "arguments": json.dumps(block.get("input", {}))},
    }


def completion(response: dict[str, Any], *, model: str, rid: str, created: int) -> dict[str, Any]:
    """The `chat.completion` for a Converse response (as botocore parses it)."""
    blocks = response.get("output", {}).get("message", {}).get("content", [])
    texts = [b["text"] for b in blocks if "text" in b]
    reasoning = [
        b["reasoningContent"]["reasoningText"].get("text", "")
        for b in blocks
        if "reasoningText" in b.get("reasoningContent", {})
    ]
    calls = [_tool_call(b["toolUse"]) for b in blocks if "toolUse" in b]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning"] = "".join(reasoning)
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason(response.get("stopReason")),
            }
        ],
        "usage": usage(response.get("usage", {})),
    }


class StreamTranslator:
    """ConverseStream events -> `chat.completion.chunk` dicts, one event at a time."""

    def __init__(self, *, model: str, rid: str, created: int, include_usage: bool) -> None:
        self.model, self.rid, self.created, self.include_usage = model, rid, created, include_usage
        self.role_sent = False
        self.tool_index: dict[int, int] = {}  # contentBlockIndex -> OpenAI tool call index
        self.finished = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if not self.role_sent:
            delta = {"role": "assistant", **delta}
            self.role_sent = True
        return {
            "id": self.rid,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Chunks for one event (`{"contentBlockDelta": {...}}` and so on); unknown events give none."""
        if "contentBlockStart" in event:
            return self._start(event["contentBlockStart"])
        if "contentBlockDelta" in event:
            return self._delta(event["contentBlockDelta"])
        if "messageStop" in event:
            self.finished = True
            reason = finish_reason(event["messageStop"].get("stopReason"))
            return [self._chunk({}, reason)]
        if "metadata" in event and self.include_usage:
            chunk = self._chunk({})
            chunk["choices"] = []
            chunk["usage"] = usage(event["metadata"].get("usage", {}))
            return [chunk]
        return []  # messageStart (the role waits for content), contentBlockStop, metadata without usage

    def _start(self, start: dict[str, Any]) -> list[dict[str, Any]]:
        tool = start.get("start", {}).get("toolUse")
        if tool is None:
            return []
        index = len(self.tool_index)
        self.tool_index[int(start.get("contentBlockIndex", 0))] = index
        call = {
            "index": index,
            "id": tool["toolUseId"],
            "type": "function",
            "function": {"name": tool["name"], "arguments": ""},
        }
        return [self._chunk({"content": None, "tool_calls": [call]})]

    def _delta(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        delta = event.get("delta", {})
        if "text" in delta:
            return [self._chunk({"content": delta["text"]})] if delta["text"] else []
        if "toolUse" in delta:
            index = self.tool_index.get(int(event.get("contentBlockIndex", 0)))
            if index is None:  # a delta without its start: nothing to attach it to
                return []
            call = {"index": index, "function": {"arguments": delta["toolUse"].get("input", "")}}
            return [self._chunk({"tool_calls": [call]})]
        text = delta.get("reasoningContent", {}).get("text")
        if text:
            return [self._chunk({"reasoning": text})]
        return []
