"""OpenAI request parsing and response bodies, shaped as vLLM 0.32 emits them (reference/vllm-samples).

Bodies are dicts in vLLM's key order, encoded with msgspec (fast). Errors are `ApiError`s that the server
turns into vLLM's error body `{"error": {"message", "type", "param", "code"}}` with the same HTTP status.
"""

from __future__ import annotations

import array
import random
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import msgspec

from eksinfer.errors import UsageError
from eksinfer.sim import outputs
from eksinfer.sim.logprobs import MAX_LOGPROBS
from eksinfer.tokenize import Tokenizer, encode_chat_body

SYSTEM_FINGERPRINT = "vllm-0.32.0-eksinfer"
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


class ApiError(Exception):
    """An error answered with vLLM's body and status."""

    def __init__(
        self, status: int, message: str, *, type_: str = "BadRequestError", param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param

    def body(self) -> bytes:
        return _json_encode(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}
        )


def dumps(obj: Any) -> bytes:
    return _json_encode(obj)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body; vLLM's 400 'Bad Request' body otherwise."""
    try:
        body = _json_decode(raw)
    except msgspec.DecodeError as err:
        detail = (
            "1 validation error:\n  {'type': 'json_invalid', 'loc': 'body.1', 'msg': 'JSON decode error', "
            f"'input': '<dict of 0 items>', 'ctx': {{'error': {str(err)!r}}}}}"
        )
        raise ApiError(400, detail, type_="Bad Request", param="body.1") from err
    except RecursionError:  # msgspec recurses once per nesting level: a bracket bomb ends here
        raise ApiError(
            400, "the request body is nested too deeply", type_="Bad Request", param="body"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", type_="Bad Request", param="body")
    return body


@dataclass(frozen=True, slots=True)
class GenerateParams:
    """What the engine needs from a completions or chat request, after validation."""

    model: str
    lora_name: str | None
    prompt_ids: list[int]
    max_tokens: int
    max_tokens_requested: int | None
    stream: bool
    include_usage: bool
    continuous_usage: bool
    ignore_eos: bool
    seed: int | None
    cache_salt: str | None = None
    echo_prompt: str | None = None
    output: outputs.OutputPlan = outputs.TEXT
    logprobs: int | None = None  # chat: top_logprobs when logprobs is true; completions: logprobs
    prompt_logprobs: int | None = None
    n: int = 1
    kv_transfer_params: dict[str, Any] | None = None  # vLLM's P/D fields (sim/pd/params.py)
    choice_outputs: tuple[outputs.OutputPlan, ...] = ()  # one plan per choice when n > 1 (else `output`)
    include_reasoning: bool = True  # chat: false drops the reasoning of a --reasoning-parser model

    def plan(self, index: int) -> outputs.OutputPlan:
        """What choice `index` writes: choices draw their own tool calls / structured text, as vLLM samples
        each of the n sequences on its own."""
        return self.choice_outputs[index] if index < len(self.choice_outputs) else self.output


@dataclass(frozen=True, slots=True)
class ModelContext:
    """What request validation needs to know about the server."""

    names: tuple[str, ...]
    lora_names: Collection[str]  # a live view when adapters load at run time
    max_model_len: int
    tokenizer: Tokenizer
    enable_auto_tool_choice: bool = False
    tool_parser: bool = False  # --tool-call-parser given: required / named / auto tool choices are served
    seed: int = 0  # the server's --seed: with the request's seed and prompt it seeds guided output

    def resolve(self, body: dict[str, Any]) -> tuple[str, str | None]:
        model = body.get("model")
        if model is None:
            return self.names[0], None
        if not isinstance(model, str):
            raise ApiError(400, "model must be a string", param="model")
        if model in self.names:
            return model, None
        if model in self.lora_names:
            return model, model
        raise ApiError(
            404,
            f"The model `{model}` does not exist. Valid aliases: {', '.join(self.names)}.",
            type_="NotFoundError",
            param="model",
        )


def missing_fields(body: dict[str, Any], names: list[str]) -> ApiError:
    """vLLM's pydantic 400 for required body fields that are absent (one line per field, as it lists them)."""
    size = f"<dict of {len(body)} items>"
    lines = [
        f"{{'type': 'missing', 'loc': 'body.{name}', 'msg': 'Field required', 'input': '{size}'}}"
        for name in names
    ]
    count = f"{len(lines)} validation error{'s' if len(lines) > 1 else ''}"
    return ApiError(400, f"{count}:\n  " + "\n  ".join(lines), type_="Bad Request", param=f"body.{names[0]}")


def _int_field(body: dict[str, Any], name: str, *, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer", param=name)
    if value < minimum:
        raise ApiError(400, f"{name} must be at least {minimum}, got {value}.", param=name)
    return value


def _pydantic_error(name: str, kind: str, msg: str, value: Any) -> ApiError:
    """vLLM's body for a request field its pydantic model rejects (same shape as its JSON decode error)."""
    error = f"{{'type': '{kind}', 'loc': 'body.{name}', 'msg': '{msg}', 'input': {value!r}}}"
    detail = f"1 validation error:\n  {error}"
    return ApiError(400, detail, type_="Bad Request", param=f"body.{name}")


def _float_field(body: dict[str, Any], name: str) -> float | None:
    """A number as pydantic reads it in lax mode: 0.5, 1 and "0.5" pass, "warm" and true do not."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
        msg = "Input should be a valid number, unable to parse string as a number"
        raise _pydantic_error(name, "float_parsing", msg, value)
    raise _pydantic_error(name, "float_type", "Input should be a valid number", value)


def _sampling(body: dict[str, Any]) -> None:
    """The checks of vLLM's `SamplingParams` for the fields the simulator accepts but does not use."""
    temperature = _float_field(body, "temperature")
    if temperature is not None and not temperature >= 0:
        raise ApiError(400, f"temperature must be non-negative, got {temperature}.", param="temperature")
    top_p = _float_field(body, "top_p")
    if top_p is not None and not 0 < top_p <= 1:
        raise ApiError(400, f"top_p must be in (0, 1], got {top_p}.", param="top_p")


def _check_vocab(ids: list[int], vocab_size: int) -> None:
    """vLLM rejects prompt token ids the model cannot embed (v1 `InputProcessor`), with this message."""
    if ids and (max(ids) >= vocab_size or min(ids) < 0):
        bad = max(ids) if max(ids) >= vocab_size else min(ids)
        raise ApiError(400, f"Token id {bad} is out of vocabulary")


_TRUE, _FALSE = {"1", "on", "t", "true", "y", "yes"}, {"0", "off", "f", "false", "n", "no"}


def _bool_field(body: dict[str, Any], name: str) -> bool:
    """A flag as vLLM's pydantic reads it (lax mode): "false" and 0 are False, "x" and 2 are an error."""
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ApiError(400, f"{name} must be a boolean", param=name)


def _logprobs_field(body: dict[str, Any], name: str) -> int | None:
    """A logprobs count, bounded by vLLM's default --max-logprobs (20) with its message."""
    value = _int_field(body, name, minimum=0)
    if value is not None and value > MAX_LOGPROBS:
        kind = "prompt_logprobs" if name == "prompt_logprobs" else "logprobs"  # vLLM names the sample field
        raise ApiError(
            400,
            f"Requested {'prompt' if kind == 'prompt_logprobs' else 'sample'} logprobs of {value}, which is "
            f"greater than max allowed: {MAX_LOGPROBS} (parameter={kind}, value={value})",
            param=kind,
        )
    return value


def _common(
    body: dict[str, Any], ctx: ModelContext, prompt_ids: list[int], default_max: int | None
) -> dict[str, Any]:
    _sampling(body)
    n = _int_field(body, "n", minimum=1) or 1
    prompt_lp = _logprobs_field(body, "prompt_logprobs")
    if prompt_lp is not None and _bool_field(body, "stream"):
        raise ApiError(
            400,
            "`prompt_logprobs` are not available when `stream=True`. (parameter=prompt_logprobs)",
            param="prompt_logprobs",
        )
    requested = _int_field(body, "max_completion_tokens", minimum=1)
    if requested is None:
        requested = _int_field(body, "max_tokens", minimum=1)
    limit = ctx.max_model_len
    if requested is not None and requested > limit:
        raise ApiError(
            400,
            f"max_tokens={requested} cannot be greater than max_model_len={limit}. "
            f"Please request fewer output tokens. (parameter=max_tokens, value={requested})",
            param="max_tokens",
        )
    if len(prompt_ids) >= limit:  # vLLM 0.32 renderers/params.py `_token_len_check` (and no room for output)
        n = len(prompt_ids)
        raise ApiError(
            400,
            f"This model's maximum context length is {limit} tokens. However, your prompt contains {n} "
            "input tokens, which exceeds this limit even without any output tokens. Please reduce the length "
            f"of the input prompt. (parameter=input_tokens, value={n})",
            param="input_tokens",
        )
    room = limit - len(prompt_ids)
    wanted = requested if requested is not None else default_max
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    seed = _int_field(body, "seed", minimum=-(2**63))
    cache_salt = body.get("cache_salt")
    if cache_salt is not None and (not isinstance(cache_salt, str) or not cache_salt):
        raise ApiError(400, "cache_salt must be a non-empty string", param="cache_salt")
    kv_params = body.get("kv_transfer_params")
    if kv_params is not None and not isinstance(kv_params, dict):  # vLLM: dict[str, Any] | None
        raise ApiError(400, "kv_transfer_params must be an object", param="kv_transfer_params")
    return {
        "kv_transfer_params": kv_params,
        "cache_salt": cache_salt,
        "max_tokens": min(wanted, room) if wanted is not None else room,
        "max_tokens_requested": requested,
        "stream": _bool_field(body, "stream"),
        "include_usage": _bool_field(stream_options, "include_usage"),
        "continuous_usage": _bool_field(stream_options, "include_usage")
        and _bool_field(stream_options, "continuous_usage_stats"),
        "ignore_eos": _bool_field(body, "ignore_eos"),
        "seed": seed,
        "n": n,
        "prompt_logprobs": prompt_lp,
    }


def parse_completion(body: dict[str, Any], ctx: ModelContext) -> GenerateParams:
    model, lora = ctx.resolve(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = ctx.tokenizer.encode_prompt(prompt)
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        ids = list(prompt)
        _check_vocab(ids, ctx.tokenizer.vocab_size)
    else:
        raise ApiError(
            400, "prompt must be a string or a list of token ids (one prompt per request)", param="prompt"
        )
    fields = _common(body, ctx, ids, 16)  # OpenAI/vLLM completions default max_tokens=16
    echo = prompt if _bool_field(body, "echo") and isinstance(prompt, str) else None
    logprobs = _logprobs_field(body, "logprobs")
    key = _plan_key(ctx, fields["seed"], ids)
    try:  # completions take response_format / structured_outputs too (no tools)
        rule = outputs.constraint(body)
        plans = tuple(outputs.constrained(rule, random.Random(key + i)) for i in range(fields["n"]))
    except outputs.OutputError as err:
        raise ApiError(400, err.message, param=err.param) from None
    return GenerateParams(
        model=model,
        lora_name=lora,
        prompt_ids=ids,
        echo_prompt=echo,
        logprobs=logprobs,
        output=plans[0],
        choice_outputs=plans,
        **fields,
    )


def parse_chat(body: dict[str, Any], ctx: ModelContext) -> GenerateParams:
    model, lora = ctx.resolve(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "messages must be a non-empty list of message objects", param="messages")
    check_text_only(messages, ctx)
    try:
        ids = encode_chat_body(ctx.tokenizer, body)  # with the request's tools, as the gateway tokenizes it
    except UsageError as err:
        raise ApiError(400, str(err), param="messages") from err
    fields = _common(body, ctx, ids, None)
    top = _logprobs_field(body, "top_logprobs")
    wants = _bool_field(body, "logprobs")
    if top and not wants:
        msg = "when using `top_logprobs`, `logprobs` must be set to true. (parameter=top_logprobs)"
        raise ApiError(400, msg, param="top_logprobs")
    key = _plan_key(ctx, fields["seed"], ids)
    try:
        plans = tuple(
            outputs.plan(
                body,
                random.Random(key + i),
                enable_auto_tool_choice=ctx.enable_auto_tool_choice,
                tool_parser=ctx.tool_parser or ctx.enable_auto_tool_choice,  # the flag needs a parser
            )
            for i in range(fields["n"])
        )
    except outputs.OutputError as err:
        raise ApiError(400, err.message, param=err.param) from None
    return GenerateParams(
        model=model,
        lora_name=lora,
        prompt_ids=ids,
        output=plans[0],
        choice_outputs=plans,
        logprobs=(top or 0) if wants else None,
        include_reasoning=body.get("include_reasoning") is not False,
        **fields,
    )


def _plan_key(ctx: ModelContext, seed: int | None, ids: list[int]) -> int:
    """The seed of a request's guided output: server seed, request seed and prompt, so the same request
    gets the same tool calls / structured text; choice i of n uses key + i."""
    return (ctx.seed * 1_000_003 + (seed or 0)) ^ zlib.crc32(array.array("q", ids).tobytes())


_MEDIA_PARTS = frozenset({"image_url", "image", "image_pil", "image_embeds", "input_audio", "audio_url"})
_MEDIA_PARTS |= {"video_url", "input_image", "audio"}


def check_text_only(messages: list[dict[str, Any]], ctx: ModelContext) -> None:
    """vLLM answers media parts sent to a text-only model with 400 (multimodal registry's message)."""
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(part, dict) and part.get("type") in _MEDIA_PARTS for part in content
        ):
            raise ApiError(400, f"{ctx.names[0]} is not a multimodal model")  # the served name, no param


def usage(prompt: int, completion: int, cached: int | None, *, stream: bool) -> dict[str, Any]:
    """vLLM's usage block: details only with --enable-prompt-tokens-details (`cached` not None)."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    elif not stream:
        out["prompt_tokens_details"] = None
    if not stream:
        out["completion_tokens_details"] = None
    return out


def completion_chunk(rid: str, created: int, model: str, text: str, finish: str | None) -> dict[str, Any]:
    choice = {
        "index": 0,
        "text": text,
        "logprobs": None,
        "finish_reason": finish,
        "stop_reason": None,
        "prompt_token_ids": None,
        "token_ids": None,
    }
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice]}


def chat_role_chunk(rid: str, created: int, model: str) -> dict[str, Any]:
    choice = {
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    }
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [choice],
        "prompt_token_ids": None,
        "prompt_text": None,
    }


def chat_chunk(rid: str, created: int, model: str, text: str, finish: str | None) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": 0,
        "delta": {"content": text},
        "logprobs": None,
        "finish_reason": finish,
    }
    if finish is not None:
        choice["stop_reason"] = None
    choice["token_ids"] = None
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [choice],
    }


def usage_chunk(rid: str, obj: str, created: int, model: str, use: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": use,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def completion_response(
    rid: str, created: int, model: str, text: str, finish: str | None, use: dict[str, Any]
) -> dict[str, Any]:
    """A whole completion in vLLM 0.32's key order (captured: tests/sim/data/vllm-0.32-agent-apis.json)."""
    choice = {
        "index": 0,
        "text": text,
        "logprobs": None,
        "finish_reason": finish,
        "stop_reason": None,
        "token_ids": None,
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "routed_experts": None,
    }
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "service_tier": None,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "usage": use,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }


def chat_response(
    rid: str,
    created: int,
    model: str,
    text: str | None,
    finish: str | None,
    use: dict[str, Any],
    *,
    tool_calls: list[dict[str, Any]] | None = None,
    reasoning: str | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
    }
    if tool_calls:  # vLLM leaves an empty list out of the body
        message["tool_calls"] = tool_calls
    message["reasoning"] = reasoning
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish,
        "stop_reason": None,
        "token_ids": None,
        "routed_experts": None,
    }
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "service_tier": None,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "usage": use,
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "prompt_text": None,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }
