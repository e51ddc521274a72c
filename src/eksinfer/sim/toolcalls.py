"""Tool calls in vLLM 0.32's response shapes, whole (`message.tool_calls`) and streamed (`delta.tool_calls`).

Whole: `content` is "" for a named or required choice (None for an auto call, as the JSON tool parsers
leave no text around it) and `tool_calls` holds `{"id", "type": "function", "function": {"name",
"arguments"}}`; `finish_reason` is "tool_calls" for required and auto, "stop" for a named function
(vLLM follows OpenAI there). A scripted call the engine cut short (`max_tokens`) is a named call with
truncated arguments, or plain content for required/auto (vLLM cannot parse the unfinished array either).

Streamed: the first delta of call k carries `{"id", "type", "index": k, "function": {"name",
"arguments": <first piece>}}`, later ones `{"index": k, "function": {"arguments": <piece>}}`, where a
piece is the part of the token's text that falls inside that call's arguments; tokens that write only the
array's punctuation send no chunk. The last chunk says "tool_calls" once any call was streamed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from eksinfer.sim.outputs import OutputPlan


def message_parts(plan: OutputPlan, text: str, finish: str | None) -> tuple[str | None, Any, str | None]:
    """(content, tool_calls or None, finish_reason) of a whole response."""
    if not plan.calls or plan.mode == "json":
        return text, None, finish
    if plan.mode == "named":
        call = plan.calls[0]
        return "", [_whole(call.id, call.name, text)], finish
    if finish != "stop":
        return text, None, finish
    calls = [_whole(c.id, c.name, c.arguments) for c in plan.calls]
    return ("" if plan.mode == "required" else None), calls, "tool_calls"


def _whole(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


class ToolDeltas:
    """Turns each new token of a scripted tool-call output into the `tool_calls` of one delta."""

    def __init__(self, plan: OutputPlan, decode: Callable[[Sequence[int]], str]) -> None:
        self.plan, self.decode = plan, decode
        self.pos = 0  # characters of the script already streamed
        self.started: set[int] = set()

    @property
    def any_streamed(self) -> bool:
        return bool(self.started)

    def advance(self, ids_so_far: Sequence[int]) -> list[dict[str, Any]]:
        """The tool-call deltas of the text the latest token added (empty: nothing to send)."""
        end = len(self.decode(ids_so_far))
        start, self.pos = self.pos, max(self.pos, end)
        out: list[dict[str, Any]] = []
        for k, call in enumerate(self.plan.calls):
            lo, hi = max(start, call.start), min(end, call.end)
            piece = self.plan.script[lo:hi] if self.plan.script is not None and lo < hi else ""
            if k not in self.started and end > call.start:
                self.started.add(k)
                function = {"name": call.name, "arguments": piece}
                out.append({"id": call.id, "type": "function", "index": k, "function": function})
            elif piece:
                out.append({"index": k, "function": {"arguments": piece}})
        return out
