"""The Responses API (`POST /v1/responses`) as vLLM 0.32 serves it for a text model.

vLLM renders `instructions` as a system message and `input` (a string, or a list of message items whose
content is a string or `input_text`/`output_text` parts, function calls and their outputs) through the chat
template, generates, and answers one `message` output item holding one `output_text` part, or, when the model
called function tools (`tools` with `"type": "function"`, `tool_choice` as in chat), one `function_call` item
per call. With `store` (default true) and VLLM_ENABLE_RESPONSES_API_STORE set, the response and its
conversation are kept in memory: `GET /v1/responses/{id}` returns it and `previous_response_id` continues it
(unknown or unstored ids: vLLM's 404). `max_output_tokens` caps the output; a capped answer has `status:
"incomplete"` and `incomplete_details: {"reason": "max_output_tokens"}`.

Streaming sends named SSE events (`event: <type>` then `data: <json>`) in OpenAI's order, each with a rising
`sequence_number`: response.created, response.in_progress, response.output_item.added,
response.content_part.added, response.output_text.delta (one per token), response.output_text.done,
response.content_part.done, response.output_item.done, response.completed (also when the answer is
incomplete), JSON keys sorted as vLLM writes them. No `[DONE]` line follows. A function-call answer streams
response.output_item.added (arguments ""), response.function_call_arguments.delta pieces,
response.function_call_arguments.done and response.output_item.done per call instead. Checked key for key
against vLLM 0.32's answers (tests/sim/data/vllm-0.32-agent-apis.json). `eksinfer.tokenize.responses.as_chat`
is also what the gateway routes on, so prefix matching sees the prompt the engine prefills.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from eksinfer.sim import protocol as p
from eksinfer.tokenize.responses import as_chat


def _chat_tools(body: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The request's function tools and tool choice in chat form, and the tools as vLLM echoes them."""
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise p.ApiError(400, "tools must be a list of tools", param="tools")
    chat: dict[str, Any] = {}
    echo = []
    for i, tool in enumerate(tools):
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(tool.get("name"), str)
        ):
            raise p.ApiError(  # built-in tools need vLLM's tool server, which the simulator does not run
                400, f"tools[{i}]: the simulator models function tools only", param="tools"
            )
        fn = {k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}
        chat.setdefault("tools", []).append({"type": "function", "function": fn})
        echo.append(
            {
                "name": tool["name"],
                "parameters": tool.get("parameters"),
                "strict": tool.get("strict"),
                "type": "function",
                "allowed_callers": None,
                "async": None,
                "defer_loading": None,
                "description": tool.get("description"),
                "output_schema": None,
            }
        )
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif choice is not None and tools:
        chat["tool_choice"] = choice
    return chat, echo


def parse(
    body: dict[str, Any], ctx: p.ModelContext, previous: Stored | None = None
) -> tuple[p.GenerateParams, dict[str, Any], list[dict[str, Any]]]:
    """Generation parameters of a Responses request, the request fields the answer echoes, and the
    conversation it renders (what `store` keeps for a later `previous_response_id`)."""
    items = body.get("input")
    if not isinstance(items, str | list) or not items:
        raise p.ApiError(400, "input must be a non-empty string or list of items", param="input")
    tools, tools_echo = _chat_tools(body)
    chat = as_chat(
        {**body, **tools},
        previous.messages if previous else None,
        previous.response["output"] if previous else None,
    )
    if not tools:
        chat.pop("tool_choice", None)
    if not chat["messages"]:
        raise p.ApiError(400, "input holds no message items", param="input")
    params = p.parse_chat(chat, ctx)
    choice = body.get("tool_choice", "auto") if tools_echo else "none"  # no tools: vLLM reports "none"
    if isinstance(choice, dict):
        choice = {"name": choice.get("name"), "type": "function"}
    echo = {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "metadata": body.get("metadata"),
        "previous_response_id": body.get("previous_response_id"),
        "user": body.get("user"),
        "tool_choice": choice,
        "tools": tools_echo,
        "background": body.get("background") is True,
    }
    return params, echo, chat["messages"]


def check_background(body: dict[str, Any], store_enabled: bool) -> None:
    """vLLM 0.32's two refusals of `background: true` (its request validator, then its serving check; the
    texts are from its source, not a capture). The simulator does not model a streamed background response."""
    if body.get("store", True) is False:
        raise p.ApiError(400, "background can only be used when `store` is true", param="background")
    if not store_enabled:
        raise p.ApiError(
            400,
            "This vLLM engine does not support `store=True` and therefore does not support the background "
            "mode. To enable these features, set the environment variable "
            "`VLLM_ENABLE_RESPONSES_API_STORE=1` when launching the vLLM server.",
            type_="invalid_request_error",
            param="background",
        )
    if body.get("stream") is True:
        raise p.ApiError(400, "the simulator does not model streamed background responses", param="stream")


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored response (`store`, with VLLM_ENABLE_RESPONSES_API_STORE): its body and the conversation
    it was generated from."""

    response: dict[str, Any]
    messages: list[dict[str, Any]]


def not_found(response_id: str) -> p.ApiError:
    """vLLM's answer for an unknown (or unstored) response id, on GET and as `previous_response_id`."""
    return p.ApiError(
        404,
        f"Response with id '{response_id}' not found.",
        type_="invalid_request_error",
        param="response_id",
    )


class ResponseBuilder:
    """Builds one response's bodies and streamed events."""

    def __init__(self, model: str, created: int, echo: dict[str, Any]) -> None:
        self.model, self.created, self.echo = model, created, echo
        self.id = f"resp_{secrets.token_hex(16)}"
        self.item_id = f"msg_{secrets.token_hex(16)}"
        self.sequence = 0
        self.call_item_ids: dict[int, str] = {}
        self.reasoning_id = f"rs_{secrets.token_hex(16)}"
        self.message_index = 0  # the message item's output_index: 1 after a streamed reasoning item

    def call_item(self, k: int, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
        """Function call k as an output item, in vLLM 0.32's key order (captured)."""
        item_id = self.call_item_ids.setdefault(k, f"fc_{secrets.token_hex(8)}")
        return {
            "arguments": arguments,
            "call_id": call_id,
            "name": name,
            "type": "function_call",
            "id": item_id,
            "async": None,
            "caller": None,
            "namespace": None,
            "status": status,
        }

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

    def queued(self) -> dict[str, Any]:
        """A background response as first answered and stored: no output, no usage yet (vLLM 0.32)."""
        return {**self.body(None, None, 0, 0, 0), "output": [], "status": "queued", "usage": None}

    def body(
        self,
        text: str | None,
        finish: str | None,
        prompt_tokens: int,
        output_tokens: int,
        cached: int,
        calls: list[dict[str, Any]] | None = None,
        reasoning: str | None = None,
        reasoning_tokens: int = 0,
    ) -> dict[str, Any]:
        """The response object; `text` None: still in progress (no output yet). `calls` (chat-shaped tool
        calls) become function_call items and replace the message, as vLLM leaves out empty content."""
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
                    "reasoning_tokens": reasoning_tokens,
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
            "output": self._reasoning(reasoning) + self._output(text, calls),
            "parallel_tool_calls": True,
            "temperature": self.echo["temperature"],
            "tool_choice": self.echo["tool_choice"],
            "tools": self.echo["tools"],
            "top_p": self.echo["top_p"],
            "background": self.echo.get("background", False),
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

    def _reasoning(self, reasoning: str | None) -> list[dict[str, Any]]:
        """A reasoning model's thinking as vLLM's first output item (`rs_`, reasoning_text content)."""
        if not reasoning:
            return []
        return [
            {
                "id": self.reasoning_id,
                "summary": [],
                "type": "reasoning",
                "content": [{"text": reasoning, "type": "reasoning_text"}],
                "encrypted_content": None,
                "status": None,
            }
        ]

    def _output(self, text: str | None, calls: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        if text is None:
            return []
        if calls:
            return [
                self.call_item(k, c["id"], c["function"]["name"], c["function"]["arguments"], "completed")
                for k, c in enumerate(calls)
            ]
        return [self._item(text, "completed")] if text else []  # vLLM adds no message without content

    def event(self, kind: str, *, last: dict[str, Any] | None = None, **fields: Any) -> bytes:
        """One SSE event: `event:` line, then the JSON with `type` and `sequence_number`, keys sorted as
        vLLM writes them (`last`: keys it appends after the sorted ones)."""
        payload = dict(sorted({"type": kind, "sequence_number": self.sequence, **fields}.items()))
        payload |= last or {}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + p.dumps(payload) + b"\n\n"

    def opening(self, *, text: bool = True, reasoning: bool = False) -> list[bytes]:
        """The events before the first token (a function-call answer opens its items as calls start; a
        reasoning model's answer opens its reasoning item, the message follows when the thinking ends)."""
        start = self.body(None, None, 0, 0, 0)
        head = [
            self.event("response.created", response=start),
            self.event("response.in_progress", response=start),
        ]
        if reasoning:
            return head + self.reasoning_opening()
        return head + self.message_opening() if text else head

    def message_opening(self) -> list[bytes]:
        """The events that open the message item and its text part."""
        k = self.message_index
        where: dict[str, Any] = {"item_id": self.item_id, "output_index": k, "content_index": 0}
        return [
            self.event("response.output_item.added", item=self._item(None, "in_progress"), output_index=k),
            self.event("response.content_part.added", part={**self._part(""), "logprobs": []}, **where),
        ]

    def delta(self, text: str) -> bytes:
        return self.event(
            "response.output_text.delta",
            delta=text,
            item_id=self.item_id,
            output_index=self.message_index,
            content_index=0,
            logprobs=[],
        )

    # A streamed reasoning item, as vLLM 0.32's simple (non-Harmony) stream processor emits it
    # (`entrypoints/openai/responses/streaming_events.py`: emit_simple_reasoning_open / _delta / _done; from
    # its source: the capture server streamed no reasoning). The message comes after it, at output_index 1.
    def _reasoning_item(self, text: str | None, status: str) -> dict[str, Any]:
        content = None if text is None else [{"text": text, "type": "reasoning_text"}]
        return {
            "id": self.reasoning_id,
            "summary": [],
            "type": "reasoning",
            "content": content,
            "encrypted_content": None,
            "status": status,
        }

    def reasoning_opening(self) -> list[bytes]:
        where: dict[str, Any] = {"item_id": self.reasoning_id, "output_index": 0, "content_index": 0}
        item = self._reasoning_item(None, "in_progress")
        return [
            self.event("response.output_item.added", item=item, output_index=0),
            self.event("response.content_part.added", part={"text": "", "type": "reasoning_text"}, **where),
        ]

    def reasoning_delta(self, text: str) -> bytes:
        where: dict[str, Any] = {"item_id": self.reasoning_id, "output_index": 0, "content_index": 0}
        return self.event("response.reasoning_text.delta", delta=text, **where)

    def reasoning_closing(self, text: str) -> list[bytes]:
        """The events that close the reasoning item; the message that may follow is output 1."""
        where: dict[str, Any] = {"item_id": self.reasoning_id, "output_index": 0, "content_index": 0}
        self.message_index = 1
        return [
            self.event("response.reasoning_text.done", text=text, **where),
            self.event("response.content_part.done", part={"text": text, "type": "reasoning_text"}, **where),
            self.event(
                "response.output_item.done", item=self._reasoning_item(text, "completed"), output_index=0
            ),
        ]

    def call_opened(self, k: int, call_id: str, name: str) -> bytes:
        item = self.call_item(k, call_id, name, "", "in_progress")
        return self.event("response.output_item.added", item=item, output_index=k)

    def call_delta(self, k: int, piece: str) -> bytes:
        return self.event(
            "response.function_call_arguments.delta",
            delta=piece,
            item_id=self.call_item_ids[k],
            output_index=k,
        )

    def closing_calls(self, final: dict[str, Any]) -> list[bytes]:
        """The events after the last token of a function-call answer (captured from vLLM 0.32)."""
        out = []
        for k, item in enumerate(final["output"]):
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    arguments=item["arguments"],
                    item_id=item["id"],
                    output_index=k,
                    last={"name": item["name"]},
                )
            )
            out.append(self.event("response.output_item.done", item=item, output_index=k))
        return [*out, self.event("response.completed", response=final)]

    def closing(self, final: dict[str, Any], *, message: bool = True) -> list[bytes]:
        """The events after the last token; `final` is the finished response body. `message` False: none
        was opened (a reasoning answer that stopped while thinking), so only the end is sent."""
        kind = "response.completed"  # also for an incomplete response: vLLM 0.32 sends no response.incomplete
        if not message:
            return [self.event(kind, response=final)]
        messages = [item for item in final["output"] if item["type"] == "message"]
        item = messages[0] if messages else self._item("", "completed")
        text = item["content"][0]["text"] if item["content"] else ""
        k = self.message_index
        where: dict[str, Any] = {"item_id": self.item_id, "output_index": k, "content_index": 0}
        return [
            self.event("response.output_text.done", text=text, logprobs=[], **where),
            self.event("response.content_part.done", part=self._part(text), **where),
            self.event("response.output_item.done", item=item, output_index=k),
            self.event(kind, response=final),
        ]
