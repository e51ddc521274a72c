"""What a chat request asks the model to write: free text, JSON for a schema, or tool calls.

vLLM 0.32 (`entrypoints/openai/chat_completion`): a named `tool_choice` guides decoding with that function's
parameter schema and answers `content: ""` plus one tool call whose `arguments` are the generated text
(`finish_reason` "stop", "tool_calls" when streamed); `"required"` guides decoding to a JSON array of
`{"name", "parameters"}` objects and answers one tool call per element (`finish_reason` "tool_calls");
`"auto"` needs `--enable-auto-tool-choice` (else 400) and lets the tool parser find calls in free text;
`"none"` (or no tools) is plain text. `response_format` (`json_object`, `json_schema`) and
`structured_outputs` (`json`, `json_object`, `choice`, `regex`, `grammar`) guide plain content the same way;
regex and grammar text comes from `grammar` (llguidance, as vLLM's fallback backend checks them).

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

from eksinfer.sim import grammar
from eksinfer.sim.structured import SchemaError, generate

Mode = Literal["text", "json", "named", "required", "auto"]
AUTO_TOOL_RATE = 0.5  # share of "auto" requests the simulated model answers with a tool call (seeded)


class OutputError(ValueError):
    """A tools / structured-output field vLLM rejects: message and the body field it names."""

    def __init__(self, message: str, param: str | None) -> None:
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


_SO_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
_SO_OPTIONS = ("disable_any_whitespace", "disable_additional_properties", "whitespace_pattern")


@dataclass(frozen=True, slots=True)
class Constraint:
    """What guided decoding holds the content to: a JSON schema, or a regex / grammar (llguidance)."""

    schema: dict[str, Any] | None = None
    raw: bool = False  # write the drawn value as it is (a choice), not as JSON
    kind: grammar.Kind | None = None
    compiled: str | None = None


def _response_format(fmt: Any) -> Constraint | None:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint({"type": "object"})
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise OutputError("response_format.json_schema.schema must be an object", "response_format")
        return Constraint(schema)
    raise OutputError("response_format.type must be text, json_object or json_schema", "response_format")


def _so_dict(so: Mapping[str, Any]) -> str:
    """vLLM's `StructuredOutputsParams.__dict__` as its error message prints it."""
    fields: dict[str, Any] = {k: so.get(k) for k in ("json", "regex", "choice", "grammar", "json_object")}
    fields |= {k: so.get(k, False) for k in _SO_OPTIONS[:2]}
    fields |= {"whitespace_pattern": so.get("whitespace_pattern"), "structural_tag": so.get("structural_tag")}
    return repr(fields | {"_backend": None, "_backend_was_auto": False})


def _structured_outputs(so: Any) -> Constraint:
    """vLLM 0.32's checks of `structured_outputs`, in its order, with its messages (captured: errors name
    no parameter)."""
    if not isinstance(so, dict):
        raise OutputError("structured_outputs must be an object", "structured_outputs")
    given = [k for k in _SO_KINDS if so.get(k) is not None]
    if len(given) > 1:
        raise OutputError(
            "You can only use one kind of constraints for structured outputs ('json', 'regex' or 'choice').",
            None,
        )
    if not given:
        raise OutputError(
            f"You must use one kind of structured outputs constraint but none are specified: {_so_dict(so)}",
            None,
        )
    kind, value = given[0], so[given[0]]
    if kind == "json":
        if isinstance(value, str):
            if not value.strip():
                raise OutputError("structured_outputs.json cannot be an empty string", None)
            try:
                value = json.loads(value)
            except ValueError:
                raise OutputError("Invalid JSON grammar specification.", None) from None
        if not isinstance(value, dict):
            raise OutputError("structured_outputs.json must be a JSON schema object", "structured_outputs")
        return Constraint(dict(value))
    if kind == "json_object":
        if value is False:
            raise OutputError(
                "structured_outputs.json_object must be True if set; omit structured_outputs to disable "
                "structured outputs",
                None,
            )
        return Constraint({"type": "object"})
    if kind == "choice":
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise OutputError("structured_outputs.choice must be a list of strings", "structured_outputs")
        if not value:
            raise OutputError(f"Choice '{value}' cannot be an empty list", None)
        return Constraint({"enum": list(value)}, raw=True)
    if kind in ("regex", "grammar"):
        if not isinstance(value, str):
            raise OutputError(f"structured_outputs.{kind} must be a string", "structured_outputs")
        spec: grammar.Kind = "regex" if kind == "regex" else "grammar"
        try:
            return Constraint(kind=spec, compiled=grammar.compile_spec(spec, value))
        except grammar.GrammarError as err:
            raise OutputError(str(err), None) from None
    try:
        tag = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        tag = None
    if not isinstance(tag, dict):
        raise OutputError(
            "Invalid structured_outputs structural_tag specification. (parameter=structured_outputs)",
            "structured_outputs",
        )
    raise OutputError(
        "the simulator does not write structural_tag output (vLLM accepts it)", "structured_outputs"
    )


def constraint(body: Mapping[str, Any]) -> Constraint | None:
    """What `response_format` or `structured_outputs` hold the content to; None: free text. The
    `guided_*` fields vLLM 0.32 removed are ignored, as vLLM ignores them (it only logs a warning)."""
    if body.get("response_format") is not None:
        return _response_format(body["response_format"])
    if body.get("structured_outputs") is None:
        return None
    return _structured_outputs(body["structured_outputs"])


def _draw(schema: dict[str, Any], rng: random.Random, param: str) -> Any:
    try:
        return generate(schema, rng)
    except SchemaError as err:
        raise OutputError(str(err), param) from None


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def call_id() -> str:
    """vLLM 0.32's default tool-call id: `chatcmpl-tool-` and 16 hex digits (captured)."""
    return f"chatcmpl-tool-{secrets.token_hex(8)}"


def plan(
    body: Mapping[str, Any], rng: random.Random, *, enable_auto_tool_choice: bool, tool_parser: bool = True
) -> OutputPlan:
    """The output plan of a chat request (tools first, then structured output), or `OutputError`.

    vLLM 0.32's renderer (`renderers/online_renderer.py`) refuses a tool choice it cannot parse: without a
    `--tool-call-parser`, "auto" (also implied by `tools` without `tool_choice`) and "required" / a named
    function get a 400 naming the flag (no `param`). With a parser but without --enable-auto-tool-choice,
    "auto" is answered as plain text (the parser is not run)."""
    tools = _tools(body)
    choice = _choice(body, tools)
    if choice not in (None, "none") and not tool_parser:
        if choice == "auto":
            raise OutputError(
                '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set', None
            )
        desc = f'function "{choice[1:]}"' if choice.startswith("=") else f'"{choice}"'
        raise OutputError(f"tool_choice={desc} requires --tool-call-parser to be set", None)
    if choice == "auto" and not enable_auto_tool_choice:
        choice = None  # free text: vLLM does not parse tool calls out of it
    if choice is not None and choice.startswith("="):
        name = choice[1:]
        args = _dumps(_draw(tools[name], rng, "tools"))
        return OutputPlan("named", args, (ToolCall(call_id(), name, args, 0, len(args)),))
    if choice == "required" or (choice == "auto" and rng.random() < AUTO_TOOL_RATE):
        return _calls("required" if choice == "required" else "auto", tools, rng)
    return constrained(constraint(body), rng)


def constrained(rule: Constraint | None, rng: random.Random) -> OutputPlan:
    """The content a constraint lets the model write (drawn with `rng`); free text without one."""
    if rule is None:
        return TEXT
    if rule.compiled is not None:
        return OutputPlan("json", grammar.generate(rule.compiled, rng))
    assert rule.schema is not None
    value = _draw(rule.schema, rng, "response_format")
    return OutputPlan("json", str(value) if rule.raw else _dumps(value))


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
