"""Tool calls in vLLM 0.32's response shapes, whole (`message.tool_calls`) and streamed (`delta.tool_calls`).

Whole: `content` is "" for a named or required choice (None for an auto call, as the JSON tool parsers
leave no text around it) and `tool_calls` holds `{"id", "type": "function", "function": {"name",
"arguments"}}`; `finish_reason` is "tool_calls" for required and auto, "stop" for a named function
(vLLM follows OpenAI there). A scripted call the engine cut short (`max_tokens`) is
plain content with "length" and no `tool_calls`, as vLLM's parser finds no finished call.

Streamed (checked against vLLM 0.32 with the hermes parser): each chunk's delta is `{"content": null,
"tool_calls": [one delta]}`; call k opens with `{"id", "type", "index": k, "function": {"name"}}`, then
`{"index": k, "function": {"arguments": <piece>}}` chunks, a piece being the part of a token's text inside
that call's arguments; tokens that write only the array's punctuation send nothing. The terminal chunk has
an empty delta and "tool_calls" for required and auto, the engine's reason ("stop") for a named function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from eksinfer.sim.outputs import OutputPlan


def message_parts(plan: OutputPlan, text: str, finish: str | None) -> tuple[str | None, Any, str | None]:
    """(content, tool_calls or None, finish_reason) of a whole response."""
    if not plan.calls or plan.mode == "json":
        return text, None, finish
    if finish != "stop":  # the call never closed: vLLM's parser finds none and returns the text
        return text, None, finish
    if plan.mode == "named":
        call = plan.calls[0]
        return "", [_whole(call.id, call.name, text)], finish
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
        """The deltas of the text the latest token added, one per chunk as vLLM sends them: a call's head
        (`id`, `type`, `index`, `function.name`) in its own chunk, then its argument pieces."""
        end = len(self.decode(ids_so_far))
        start, self.pos = self.pos, max(self.pos, end)
        out: list[dict[str, Any]] = []
        for k, call in enumerate(self.plan.calls):
            if k not in self.started and end > call.start:
                self.started.add(k)
                out.append({"id": call.id, "type": "function", "index": k, "function": {"name": call.name}})
            lo, hi = max(start, call.start), min(end, call.end)
            if self.plan.script is not None and lo < hi:
                out.append({"index": k, "function": {"arguments": self.plan.script[lo:hi]}})
        return out
