"""The Responses API (`POST /v1/responses`) as vLLM 0.32 serves it for a text model.

vLLM renders `instructions` as a system message and `input` (a string, or a list of message items whose
content is a string or `input_text`/`output_text` parts) through the chat template, generates, and answers
one `message` output item holding one `output_text` part. `max_output_tokens` caps the output; a capped
answer has `status: "incomplete"` and `incomplete_details: {"reason": "max_output_tokens"}`.

Streaming sends named SSE events (`event: <type>` then `data: <json>`) in OpenAI's order, each with a
rising `sequence_number`: response.created, response.in_progress, response.output_item.added,
response.content_part.added, response.output_text.delta (one per token), response.output_text.done,
response.content_part.done, response.output_item.done, response.completed (also when the answer is
incomplete), JSON keys sorted as vLLM writes them. No `[DONE]` line follows. Checked key for key against
vLLM 0.32's answers (tests/sim/data/vllm-0.32-agent-apis.json).
`eksinfer.tokenize.responses.as_chat` is also what the gateway routes on, so prefix matching sees the
prompt the engine prefills.
"""

from __future__ import annotations

import secrets
from typing import Any

from eksinfer.sim import protocol as p
from eksinfer.tokenize.responses import as_chat


def parse(body: dict[str, Any], ctx: p.ModelContext) -> tuple[p.GenerateParams, dict[str, Any]]:
    """Generation parameters of a Responses request, and the request fields the answer echoes."""
    items = body.get("input")
    if not isinstance(items, str | list) or not items:
        raise p.ApiError(400, "input must be a non-empty string or list of items", param="input")
    if body.get("tools"):  # Responses tools are shaped differently (flat `name`, built-in tools)
        raise p.ApiError(400, "the simulator's Responses API answers text only: no tools", param="tools")
    chat = as_chat(body)
    if not chat["messages"]:
        raise p.ApiError(400, "input holds no message items", param="input")
    params = p.parse_chat(chat, ctx)
    echo = {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "metadata": body.get("metadata"),
        "previous_response_id": body.get("previous_response_id"),
        "user": body.get("user"),
    }
    return params, echo


class ResponseBuilder:
    """Builds one response's bodies and streamed events."""

    def __init__(self, model: str, created: int, echo: dict[str, Any]) -> None:
        self.model, self.created, self.echo = model, created, echo
        self.id = f"resp_{secrets.token_hex(16)}"
        self.item_id = f"msg_{secrets.token_hex(16)}"
        self.sequence = 0

    def _part(self, text: str) -> dict[str, Any]:
        return {"annotations": [], "text": text, "type": "output_text", "logprobs": None}

    def _item(self, text: str | None, status: str) -> dict[str, Any]:
        content = [] if text is None else [self._part(text)]
        return {
            "id": self.item_id,
            "content": content,
            "role": "assistant",
            "status": status,
            "type": "message",
            "phase": None,
        }

    def body(
        self, text: str | None, finish: str | None, prompt_tokens: int, output_tokens: int, cached: int
    ) -> dict[str, Any]:
        """The response object; `text` None: still in progress (no output yet)."""
        if text is None:
            status, incomplete = "in_progress", None
        elif finish == "length":
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        else:
            status, incomplete = "completed", None
        usage = None
        if text is not None:
            usage = {
                "input_tokens": prompt_tokens,
                "input_tokens_details": {
                    "cached_tokens": cached,
                    "cache_write_tokens": 0,
                    "input_tokens_per_turn": [],
                    "cached_tokens_per_turn": [],
                },
                "output_tokens": output_tokens,
                "output_tokens_details": {
                    "reasoning_tokens": 0,
                    "tool_output_tokens": 0,
                    "output_tokens_per_turn": [],
                    "tool_output_tokens_per_turn": [],
                },
                "total_tokens": prompt_tokens + output_tokens,
            }
        return {
            "id": self.id,
            "created_at": self.created,
            "incomplete_details": incomplete,
            "instructions": self.echo["instructions"],
            "metadata": self.echo["metadata"],
            "model": self.model,
            "object": "response",
            "output": [] if text is None else [self._item(text, "completed")],
            "parallel_tool_calls": True,
            "temperature": self.echo["temperature"],
            "tool_choice": "none",  # no tools: vLLM 0.32 reports "none"
            "tools": [],
            "top_p": self.echo["top_p"],
            "background": False,
            "max_output_tokens": self.echo["max_output_tokens"],
            "max_tool_calls": None,
            "previous_response_id": self.echo["previous_response_id"],
            "prompt": None,
            "reasoning": None,
            "service_tier": "auto",
            "status": status,
            "text": None,
            "top_logprobs": None,
            "truncation": "disabled",
            "usage": usage,
            "user": self.echo["user"],
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "input_messages": None,
            "output_messages": None,
        }

    def event(self, kind: str, **fields: Any) -> bytes:
        """One SSE event: `event:` line, then the JSON with `type` and `sequence_number`."""
        payload = dict(sorted({"type": kind, "sequence_number": self.sequence, **fields}.items()))
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + p.dumps(payload) + b"\n\n"

    def opening(self) -> list[bytes]:
        """The events before the first token."""
        start = self.body(None, None, 0, 0, 0)
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return [
            self.event("response.created", response=start),
            self.event("response.in_progress", response=start),
            self.event("response.output_item.added", item=self._item(None, "in_progress"), output_index=0),
            self.event("response.content_part.added", part={**self._part(""), "logprobs": []}, **where),
        ]

    def delta(self, text: str) -> bytes:
        return self.event(
            "response.output_text.delta",
            delta=text,
            item_id=self.item_id,
            output_index=0,
            content_index=0,
            logprobs=[],
        )

    def closing(self, final: dict[str, Any]) -> list[bytes]:
        """The events after the last token; `final` is the finished response body."""
        text = final["output"][0]["content"][0]["text"]
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        kind = "response.completed"  # also for an incomplete response: vLLM 0.32 sends no response.incomplete
        return [
            self.event("response.output_text.done", text=text, logprobs=[], **where),
            self.event("response.content_part.done", part=self._part(text), **where),
            self.event("response.output_item.done", item=final["output"][0], output_index=0),
            self.event(kind, response=final),
        ]
