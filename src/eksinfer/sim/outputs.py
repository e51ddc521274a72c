"""What a chat request asks the model to write: free text, JSON for a schema, or tool calls.

vLLM 0.32 (`entrypoints/openai/chat_completion`): a named `tool_choice` guides decoding with that function's
parameter schema and answers `content: ""` plus one tool call whose `arguments` are the generated text
(`finish_reason` "stop", "tool_calls" when streamed); `"required"` guides decoding to a JSON array of
`{"name", "parameters"}` objects and answers one tool call per element (`finish_reason` "tool_calls");
`"auto"` needs `--enable-auto-tool-choice` (else 400) and lets the tool parser find calls in free text;
`"none"` (or no tools) is plain text. `response_format` (`json_object`, `json_schema`) and
`structured_outputs` (`json`, `choice`) guide plain content the same way.

The simulator draws the value from the schema with a seeded generator (`structured.generate`) and scripts
the engine to emit exactly its tokens, then EOS; `max_tokens` can still cut it short ("length"), as in vLLM.
"""

from __future__ import annotations

import json
import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from eksinfer.sim.structured import SchemaError, generate

Mode = Literal["text", "json", "named", "required", "auto"]
AUTO_TOOL_RATE = 0.5  # share of "auto" requests the simulated model answers with a tool call (seeded)


class OutputError(ValueError):
    """A tools / structured-output field vLLM rejects: message and the body field it names."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message, self.param = message, param


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call in the scripted output; `start`/`end` index its arguments inside the script text."""

    id: str
    name: str
    arguments: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class OutputPlan:
    """The text the model will write (`script`; None: free sampling) and how to present it."""

    mode: Mode
    script: str | None = None
    calls: tuple[ToolCall, ...] = ()


TEXT = OutputPlan("text")


def _tools(body: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    tools = body.get("tools")
    if tools is None:
        return {}
    if not isinstance(tools, list):
        raise OutputError("tools must be a list of tools", "tools")
    out: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        kind = tool.get("type", "function") if isinstance(tool, dict) else None
        if kind != "function" or not isinstance(fn, dict):
            raise OutputError(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", "tools")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise OutputError(f"tools[{i}].function.name must be a non-empty string", "tools")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise OutputError(f"tools[{i}].function.parameters must be an object", "tools")
        out[name] = params or {}
    return out


def _choice(body: Mapping[str, Any], tools: dict[str, dict[str, Any]]) -> str | None:
    """ "none" / "auto" / "required", or the named function; None when tools play no part."""
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise OutputError("tool_choice must name a function: {'type': 'function', ...}", "tool_choice")
        if not tools:
            raise OutputError(
                "When using `tool_choice`, `tools` must be set. (parameter=tool_choice)", "tool_choice"
            )
        if name not in tools:
            msg = "The tool specified in `tool_choice` does not match any of the specified `tools`"
            raise OutputError(f"{msg} (parameter=tool_choice)", "tool_choice")
        return "=" + name
    if choice is None:
        return "auto" if tools else None
    if choice not in ("none", "auto", "required"):
        raise OutputError("tool_choice must be 'none', 'auto', 'required' or a named function", "tool_choice")
    if choice == "required" and not tools:
        raise OutputError(
            "When using `tool_choice`, `tools` must be set. (parameter=tool_choice)", "tool_choice"
        )
    return str(choice)


def _response_schema(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The schema `response_format` or `structured_outputs` ask for; None when they ask for none."""
    fmt = body.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "text":
            return None
        if kind == "json_object":
            return {"type": "object"}
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise OutputError("response_format.json_schema.schema must be an object", "response_format")
            return schema
        raise OutputError("response_format.type must be text, json_object or json_schema", "response_format")
    so = body.get("structured_outputs")
    if so is None:
        return None
    if not isinstance(so, dict):
        raise OutputError("structured_outputs must be an object", "structured_outputs")
    if isinstance(so.get("json"), str):
        try:
            loaded = json.loads(so["json"])
        except ValueError:
            raise OutputError("structured_outputs.json is not valid JSON", "structured_outputs") from None
        so = {**so, "json": loaded}
    if isinstance(so.get("json"), dict):
        return dict(so["json"])
    if so.get("json_object"):
        return {"type": "object"}
    if isinstance(so.get("choice"), list) and so["choice"]:
        if not all(isinstance(c, str) for c in so["choice"]):
            raise OutputError("structured_outputs.choice must be a list of strings", "structured_outputs")
        return {"enum": list(so["choice"]), "x-eksinfer-raw": True}
    raise OutputError(
        "the simulator supports structured_outputs json, json_object and choice", "structured_outputs"
    )


def _draw(schema: dict[str, Any], rng: random.Random, param: str) -> Any:
    try:
        return generate(schema, rng)
    except SchemaError as err:
        raise OutputError(str(err), param) from None


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def call_id() -> str:
    """vLLM's default tool-call id: `chatcmpl-tool-` and 32 hex digits."""
    return f"chatcmpl-tool-{secrets.token_hex(16)}"


def plan(body: Mapping[str, Any], rng: random.Random, *, enable_auto_tool_choice: bool) -> OutputPlan:
    """The output plan of a chat request (tools first, then structured output), or `OutputError`."""
    tools = _tools(body)
    choice = _choice(body, tools)
    if choice == "auto" and not enable_auto_tool_choice:  # also when tools come without a tool_choice
        raise OutputError(
            '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
            "tool_choice",
        )
    if choice is not None and choice.startswith("="):
        name = choice[1:]
        args = _dumps(_draw(tools[name], rng, "tools"))
        return OutputPlan("named", args, (ToolCall(call_id(), name, args, 0, len(args)),))
    if choice == "required" or (choice == "auto" and rng.random() < AUTO_TOOL_RATE):
        return _calls("required" if choice == "required" else "auto", tools, rng)
    schema = _response_schema(body)
    if schema is None:
        return TEXT
    raw = schema.pop("x-eksinfer-raw", False)
    value = _draw(schema, rng, "response_format")
    return OutputPlan("json", str(value) if raw else _dumps(value))


def _calls(mode: Mode, tools: dict[str, dict[str, Any]], rng: random.Random) -> OutputPlan:
    """A JSON array of `{"name", "parameters"}` (vLLM's required-tools grammar); auto scripts the same."""
    names = list(tools)
    chosen = [rng.choice(names) for _ in range(1 if rng.random() < 0.75 else 2)]
    script, calls = "[", []
    for i, name in enumerate(chosen):
        args = _dumps(_draw(tools[name], rng, "tools"))
        head = f'{", " if i else ""}{{"name": {_dumps(name)}, "parameters": '
        start = len(script) + len(head)
        calls.append(ToolCall(call_id(), name, args, start, start + len(args)))
        script += head + args + "}"
    return OutputPlan(mode, script + "]", tuple(calls))
