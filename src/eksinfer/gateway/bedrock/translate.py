"""OpenAI chat completions -> Bedrock Converse request: pure functions, no I/O.

The mapping (Converse shapes from botocore's bedrock-runtime service model 2023-09-30):

    system / developer messages    -> `system: [{text}]`, one block per message, in order
    user / assistant messages      -> `messages: [{role, content: [blocks]}]`; text parts -> {text},
                                      data: URL images -> {image: {format, source: {bytes}}}
    assistant.tool_calls           -> {toolUse: {toolUseId: id, name, input: json.loads(arguments)}}
    tool messages                  -> {toolResult: {toolUseId, content: [{text}]}} in a user turn
    consecutive turns of one role  -> merged into one turn (Converse requires alternating roles, and tool
                                      results of one assistant turn must come back as one user turn)
    max_tokens / max_completion_tokens, temperature, top_p, stop
                                   -> inferenceConfig {maxTokens, temperature, topP, stopSequences}
    tools, tool_choice             -> toolConfig {tools: [{toolSpec}], toolChoice: auto | any | tool{name}}
    response_format json_schema    -> outputConfig.textFormat (a JSON schema the model must follow)

Choices this module makes (and docs/bedrock.md repeats):
* `tool_choice: "none"` has no Converse equivalent: the tools are left out, unless the history holds tool
  calls, which Converse accepts only with a toolConfig; then the tools stay and the model may still call one.
* A history with tool calls but no `tools` in the request gets a minimal spec (`{"type": "object"}`) per tool
  name it uses, since Bedrock refuses toolUse/toolResult blocks without a toolConfig.
* Image URLs other than `data:` are refused: the gateway does not fetch URLs a client names.
* `n > 1`, `logprobs`, `top_logprobs` and the legacy `functions` change what the answer is: always HTTP 400.
  Sampling hints Converse lacks (seed, penalties, ...) are dropped or refused per the pool's
  `drop_unsupported_params`.
* `continue_final_message: true` (vLLM's option, which the gateway's stream continuation sends) asks to
  continue the final assistant message. A model that accepts an assistant prefill (the pool's
  `assistant_prefill` list) gets the conversation ending with that message, its trailing whitespace cut
  (Anthropic's models refuse a prefill that ends with whitespace). Other models refuse a conversation that
  does not end with a user message (ValidationException, "This model does not support assistant message
  prefill. The conversation must end with a user message."), so they get one more user turn asking for the
  rest of the cut-off answer (`CONTINUE_INSTRUCTION`). A final assistant message without that option is
  sent as it is, for Bedrock to take as a prefill or refuse.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from eksinfer.gateway.http import RequestRefused

# Fields read below; anything else is a hint Converse has no place for.
_MAPPED = frozenset(
    {
        "model", "messages", "stream", "max_tokens", "max_completion_tokens", "temperature", "top_p",
        "stop", "tools", "tool_choice", "response_format", "continue_final_message", "add_generation_prompt",
    }
)  # fmt: skip
# Metadata that never changes an answer: ignored on every tier.
_IGNORED = frozenset({"stream_options", "user", "metadata", "store", "service_tier"})
# Fields that change the answer's shape: a fallback tier must not silently answer something else.
_SHAPE = ("n", "logprobs", "top_logprobs", "functions", "function_call", "audio")
_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif"}
_IMAGE_FORMATS["image/webp"] = "webp"


# The user turn that asks a model without prefill for the rest of a cut-off answer (the gateway's own words).
CONTINUE_INSTRUCTION = (
    "Your previous reply was cut off. Write only the rest of it, starting exactly where it stopped: do not "
    "repeat any of it, do not comment on the interruption, do not start over."
)


def _refuse(message: str, param: str) -> RequestRefused:
    return RequestRefused(400, message, "invalid_request", param=param)


def check_fields(body: dict[str, Any], *, drop_unsupported: bool) -> None:
    """Refuses fields this tier cannot honour (see the module docstring)."""
    for key in _SHAPE:
        value = body.get(key)
        if value in (None, False) or (key == "n" and value == 1):
            continue
        raise _refuse(f"{key} is not supported by the Amazon Bedrock tier", key)
    if drop_unsupported:
        return
    for key in body:
        if key not in _MAPPED and key not in _IGNORED and key not in _SHAPE:
            raise _refuse(f"{key} is not supported by the Amazon Bedrock tier", key)


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _refuse("expected a string", param)
    return value


def _image(part: dict[str, Any], param: str) -> dict[str, Any]:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    url = _text(url, f"{param}.image_url.url")
    head, sep, data = url.partition(",")
    if not url.startswith("data:") or not sep or ";base64" not in head:
        raise _refuse("only data: URLs (base64) are accepted for images on this tier", f"{param}.image_url")
    mime = head[5:].split(";")[0].lower()
    if mime not in _IMAGE_FORMATS:
        raise _refuse(f"image type {mime!r} is not one of png, jpeg, gif, webp", f"{param}.image_url")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _refuse("the image's base64 data does not decode", f"{param}.image_url") from None
    return {"image": {"format": _IMAGE_FORMATS[mime], "source": {"bytes": raw}}}


def _content(content: Any, param: str, *, images: bool) -> list[dict[str, Any]]:
    """Content blocks of a message's `content` (a string or a list of parts); empty text is left out."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise _refuse("content must be a string or a list of parts", param)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part, dict):
            text = _text(part.get("text"), f"{where}.text")
            if text:
                blocks.append({"text": text})
        elif kind == "image_url" and images and isinstance(part, dict):
            blocks.append(_image(part, where))
        else:
            raise _refuse(f"content part type {kind!r} is not supported by the Amazon Bedrock tier", where)
    return blocks


def _tool_use(call: Any, param: str) -> dict[str, Any]:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise _refuse("a tool call needs a function", param)
    fn = call["function"]
    name = _text(fn.get("name"), f"{param}.function.name")
    arguments = fn.get("arguments") or "{}"
    try:
        args = json.loads(_text(arguments, f"{param}.function.arguments"))
    except json.JSONDecodeError:
        raise _refuse("arguments are not JSON", f"{param}.function.arguments") from None
    if not isinstance(args, dict):
        raise _refuse("arguments must be a JSON object", f"{param}.function.arguments")
    call_id = _text(call.get("id"), f"{param}.id")
    return {"toolUse": {"toolUseId": call_id, "name": name, "input": args}}


def _turn(message: Any, i: int) -> tuple[str, list[dict[str, Any]]]:
    """(role, blocks) of one non-system message."""
    param = f"messages[{i}]"
    if not isinstance(message, dict):
        raise _refuse("a message must be an object", param)
    role = message.get("role")
    if role == "user":
        return "user", _content(message.get("content"), f"{param}.content", images=True)
    if role == "assistant":
        blocks = _content(message.get("content"), f"{param}.content", images=False)
        calls = message.get("tool_calls") or []
        if not isinstance(calls, list):
            raise _refuse("tool_calls must be a list", f"{param}.tool_calls")
        blocks += [_tool_use(c, f"{param}.tool_calls[{k}]") for k, c in enumerate(calls)]
        return "assistant", blocks
    if role == "tool":
        call_id = _text(message.get("tool_call_id"), f"{param}.tool_call_id")
        # an empty result becomes `{}`: Bedrock refuses blank text blocks
        result = _content(message.get("content"), f"{param}.content", images=False) or [{"json": {}}]
        return "user", [{"toolResult": {"toolUseId": call_id, "content": result}}]
    raise _refuse(f"role {role!r} is not supported by the Amazon Bedrock tier", f"{param}.role")


def _messages(raw: Any) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """(system blocks, alternating turns) of an OpenAI `messages` list."""
    if not isinstance(raw, list) or not raw:
        raise _refuse("messages must be a non-empty list", "messages")
    system: list[dict[str, str]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(raw):
        if isinstance(message, dict) and message.get("role") in ("system", "developer"):
            system += [b for b in _content(message.get("content"), f"messages[{i}].content", images=False)]
            continue
        role, blocks = _turn(message, i)
        if not blocks:
            continue  # an empty turn: Converse refuses blank content
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise _refuse("messages hold no user or assistant content", "messages")
    return system, turns


def _tool_spec(tool: Any, k: int) -> dict[str, Any]:
    param = f"tools[{k}]"
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise _refuse("only function tools are supported by the Amazon Bedrock tier", param)
    fn = tool.get("function")
    if not isinstance(fn, dict):
        raise _refuse("a tool needs a function", f"{param}.function")
    spec: dict[str, Any] = {"name": _text(fn.get("name"), f"{param}.function.name")}
    if fn.get("description"):
        spec["description"] = _text(fn["description"], f"{param}.function.description")
    schema = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(schema, dict):
        raise _refuse("parameters must be a JSON schema object", f"{param}.function.parameters")
    spec["inputSchema"] = {"json": schema}
    return {"toolSpec": spec}


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None or choice == "auto":
        return {"auto": {}}
    if choice == "required":
        return {"any": {}}
    if choice == "none":
        return None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"tool": {"name": _text(choice["function"].get("name"), "tool_choice.function.name")}}
    raise _refuse("tool_choice must be auto, required, none or a function", "tool_choice")


def _tool_config(body: dict[str, Any], turns: list[dict[str, Any]]) -> dict[str, Any] | None:
    used = [b["toolUse"]["name"] for t in turns for b in t["content"] if "toolUse" in b]
    history = bool(used) or any("toolResult" in b for t in turns for b in t["content"])
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise _refuse("tools must be a list", "tools")
    specs = [_tool_spec(t, k) for k, t in enumerate(tools)]
    choice = _tool_choice(body.get("tool_choice")) if specs else {"auto": {}}
    if choice is None and not history:
        return None
    if not specs and not history:
        return None
    if not specs:  # Bedrock refuses tool blocks without a toolConfig: describe the tools the history used
        for name in dict.fromkeys(used) or ["tool"]:
            specs.append({"toolSpec": {"name": name, "inputSchema": {"json": {"type": "object"}}}})
    return {"tools": specs, "toolChoice": choice or {"auto": {}}}


def _inference(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _refuse("must be a positive integer", key)
            config["maxTokens"] = value
            break
    for key, name in (("temperature", "temperature"), ("top_p", "topP")):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise _refuse("must be a non-negative number", key)
            config[name] = float(value)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _refuse("stop must be a string or a list of strings", "stop")
        if [s for s in stops if s]:
            config["stopSequences"] = [s for s in stops if s]
    return config


def _output_config(body: dict[str, Any]) -> dict[str, Any] | None:
    fmt = body.get("response_format")
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise _refuse(
            "only response_format json_schema is supported by the Amazon Bedrock tier", "response_format"
        )
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise _refuse("json_schema.schema must be an object", "response_format.json_schema.schema")
    definition: dict[str, Any] = {"schema": json.dumps(spec["schema"])}
    for key in ("name", "description"):
        if isinstance(spec.get(key), str):
            definition[key] = spec[key]
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": definition}}}


def _continued(turns: list[dict[str, Any]], *, prefill: bool) -> list[dict[str, Any]]:
    """The turns that continue a final assistant message: as a prefill, or with an instruction after it."""
    last = turns[-1] if turns else None
    if last is None or last["role"] != "assistant" or any("text" not in b for b in last["content"]):
        msg = "continue_final_message needs a final assistant message of text"
        raise _refuse(msg, "continue_final_message")
    if not prefill:
        return [*turns, {"role": "user", "content": [{"text": CONTINUE_INSTRUCTION}]}]
    blocks = [dict(b) for b in last["content"]]
    blocks[-1]["text"] = blocks[-1]["text"].rstrip()
    blocks = [b for b in blocks if b["text"]]
    return [*turns[:-1], {"role": "assistant", "content": blocks}] if blocks else turns[:-1]


def to_converse(
    body: dict[str, Any], model_id: str, *, drop_unsupported: bool = True, prefill: bool = False
) -> dict[str, Any]:
    """Keyword arguments of botocore's `converse` / `converse_stream` for an OpenAI chat body; `prefill`:
    the model accepts a conversation ending with an assistant message (see `continue_final_message`).

    Raises RequestRefused(400) naming the offending field."""
    check_fields(body, drop_unsupported=drop_unsupported)
    system, turns = _messages(body.get("messages"))
    if body.get("continue_final_message") is True:
        turns = _continued(turns, prefill=prefill)
    request: dict[str, Any] = {"modelId": model_id, "messages": turns}
    if system:
        request["system"] = system
    inference = _inference(body)
    if inference:
        request["inferenceConfig"] = inference
    tools = _tool_config(body, turns)
    if tools is not None:
        request["toolConfig"] = tools
    output = _output_config(body)
    if output is not None:
        request["outputConfig"] = output
    return request
