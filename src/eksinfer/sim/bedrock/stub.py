"""An aiohttp server that answers like Bedrock Runtime's Converse and ConverseStream, with faults on demand.

Wire protocol (botocore's bedrock-runtime service model 2023-09-30, protocol rest-json):

    POST /model/{modelId}/converse          JSON in, JSON out
    POST /model/{modelId}/converse-stream   JSON in, 200 + `application/vnd.amazon.eventstream` frames:
        messageStart, [contentBlockStart], contentBlockDelta..., contentBlockStop, messageStop, metadata
    errors: the AWS status, `x-amzn-ErrorType: <Code>:<namespace>`, `x-amzn-RequestId`, body {"message"}

It checks what Bedrock checks and the gateway's translation must get right (roles alternate and start with
`user`, no blank text, tool blocks need a toolConfig) and ignores the SigV4 signature. The answer is a
deterministic word list (" b0 b1 ..."), cut by maxTokens and stopSequences; a forced tool choice answers
with one tool call. It answers as fast as it can unless given a latency (`first_token_s`, `tokens_per_s`,
`latency_jitter`): a benchmark whose last tier answered in a millisecond would flatter every TTFT measured
through it. A realistic figure: Artificial Analysis measured Amazon Bedrock at a median 0.76 s to the
first token and 60 output tokens/s for Claude 3 Sonnet (artificialanalysis.ai/models/claude-3-sonnet/
providers); `python -m eksinfer.sim.bedrock` and `make bench ARGS=faults` use those two numbers.
`StubFaults` injects throttling, 503s, a slow first event and streams that break (an in-band exception
event or a dropped connection); the faults are read per request, so a test or a benchmark can change them
while the stub runs.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from eksinfer.sim.bedrock.eventstream import event_frame, exception_frame

_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"


@dataclass
class StubFaults:
    """Faults drawn per request (shares in [0, 1])."""

    throttle_share: float = 0.0  # 429 ThrottlingException before any byte
    unavailable_share: float = 0.0  # 503 ServiceUnavailableException before any byte
    first_event_delay_s: float = 0.0  # before the answer (Converse) or the first event (ConverseStream)
    token_delay_s: float = 0.0  # between two text deltas
    break_share: float = 0.0  # streams that break after `break_after_events` events
    break_after_events: int = 2
    break_mode: Literal["exception", "reset"] = "exception"  # in-band modelStreamErrorException, or a cut
    hold: asyncio.Event | None = None  # when set: the answer / first event waits until the event is set


@dataclass
class Recorded:
    """One request as the stub saw it (for tests to check the translation on the wire)."""

    model_id: str
    stream: bool
    body: dict[str, Any]
    headers: dict[str, str]


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class _Answer:
    pieces: list[str]
    tool: dict[str, Any] | None
    stop_reason: str
    usage: dict[str, int]


@dataclass
class BedrockStub:
    """The stub's state: settings, faults, and what it has seen."""

    output_tokens: int = 8
    known_models: frozenset[str] | None = None  # None: every model id is served
    first_token_s: float = 0.0  # the service's own time to the first text delta (or to a Converse answer)
    tokens_per_s: float = 0.0  # pace of the text deltas after it; 0: as fast as the stub can write
    latency_jitter: float = 0.0  # both scaled per request by a random factor in [1 - j, 1 + j]
    cache_read_input_tokens: int = 0
    seed: int = 0
    faults: StubFaults = field(default_factory=StubFaults)
    recorded: deque[Recorded] = field(default_factory=lambda: deque(maxlen=1000))
    counts: Counter[str] = field(default_factory=Counter)
    # Model ids that refuse a conversation ending with an assistant message (a prefill), as Claude 4.6 and
    # later do on Bedrock; the others refuse only a prefill that ends with whitespace (`_check_prefill`).
    no_prefill_models: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/model/{modelId}/converse", self._converse)
        app.router.add_post("/model/{modelId}/converse-stream", self._converse_stream)
        app.router.add_get("/ping", self._ping)  # the stub's own readiness check; Bedrock has none
        return app

    async def _ping(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    # --- request checks and the answer -------------------------------------------------------------

    async def _admit(self, request: web.Request, stream: bool) -> tuple[str, dict[str, Any]]:
        model_id = request.match_info["modelId"]
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise _Refused(400, "ValidationException", "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise _Refused(400, "ValidationException", "The request body must be an object.")
        self.recorded.append(Recorded(model_id, stream, body, dict(request.headers)))
        if self.known_models is not None and model_id not in self.known_models:
            raise _Refused(404, "ResourceNotFoundException", "The provided model identifier is invalid.")
        _check_conversation(body)
        _check_prefill(body, model_id in self.no_prefill_models)
        draw = self.rng.random()
        if draw < self.faults.throttle_share:
            raise _Refused(429, "ThrottlingException", "Too many requests, please wait before trying again.")
        if draw < self.faults.throttle_share + self.faults.unavailable_share:
            raise _Refused(503, "ServiceUnavailableException", "The service is temporarily unavailable.")
        return model_id, body

    def _answer(self, body: dict[str, Any]) -> _Answer:
        texts = [b.get("text", "") for m in body["messages"] for b in m["content"]]
        texts += [b.get("text", "") for b in body.get("system", [])]
        input_tokens = max(1, sum(len(t.split()) for t in texts))
        usage = {"inputTokens": input_tokens}
        if self.cache_read_input_tokens:
            usage["cacheReadInputTokens"] = self.cache_read_input_tokens
        tool = _forced_tool(body)
        if tool is not None:
            last = next((t for t in reversed(texts[: -len(body.get("system", [])) or None]) if t), "")
            call = {"toolUseId": f"tooluse_{uuid.uuid4().hex[:20]}", "name": tool, "input": {"q": last[:40]}}
            usage |= {"outputTokens": 5, "totalTokens": input_tokens + 5}
            return _Answer([], call, "tool_use", usage)
        config = body.get("inferenceConfig", {})
        limit = int(config.get("maxTokens", self.output_tokens))
        stops = set(config.get("stopSequences", []))
        pieces: list[str] = []
        reason = "end_turn"
        for i in range(self.output_tokens):
            if len(pieces) == limit:
                reason = "max_tokens"
                break
            if f"b{i}" in stops:
                reason = "stop_sequence"
                break
            pieces.append(f"b{i}" if i == 0 else f" b{i}")
        usage |= {"outputTokens": len(pieces), "totalTokens": input_tokens + len(pieces)}
        return _Answer(pieces, None, reason, usage)

    # --- handlers ----------------------------------------------------------------------------------

    async def _converse(self, request: web.Request) -> web.StreamResponse:
        try:
            _, body = await self._admit(request, stream=False)
        except _Refused as err:
            return self._error(err)
        answer = self._answer(body)
        scale = self._latency_scale()
        latency_s = scale * (self.first_token_s + len(answer.pieces) * self._token_gap_s())
        await self._first_event_wait(latency_s)
        content: list[dict[str, Any]] = [{"text": "".join(answer.pieces)}] if answer.pieces else []
        if answer.tool is not None:
            content.append({"toolUse": answer.tool})
        self.counts["converse"] += 1
        return web.json_response(
            {
                "output": {"message": {"role": "assistant", "content": content}},
                "stopReason": answer.stop_reason,
                "usage": answer.usage,
                "metrics": {"latencyMs": max(1, round(latency_s * 1000))},
            },
            headers={"x-amzn-RequestId": str(uuid.uuid4())},
        )

    async def _converse_stream(self, request: web.Request) -> web.StreamResponse:
        try:
            _, body = await self._admit(request, stream=True)
        except _Refused as err:
            return self._error(err)
        answer = self._answer(body)
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/vnd.amazon.eventstream",
                "x-amzn-RequestId": str(uuid.uuid4()),
            }
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        scale = self._latency_scale()
        await self._first_event_wait(scale * self.first_token_s)
        gap_s = scale * self._token_gap_s()
        breaks = self.rng.random() < self.faults.break_share
        for sent, (frame, paced) in enumerate(_events(answer)):
            if breaks and sent == self.faults.break_after_events:
                self.counts["broken"] += 1
                if self.faults.break_mode == "reset" and request.transport is not None:
                    request.transport.abort()
                    return response
                await response.write(exception_frame("modelStreamErrorException", "The model stream broke."))
                await response.write_eof()
                return response
            if sent and paced and (gap_s or self.faults.token_delay_s):
                await asyncio.sleep(gap_s + self.faults.token_delay_s)
            await response.write(frame)
        self.counts["streams"] += 1
        await response.write_eof()
        return response

    def _latency_scale(self) -> float:
        jitter = self.latency_jitter
        return 1.0 + jitter * (2.0 * self.rng.random() - 1.0) if jitter else 1.0

    def _token_gap_s(self) -> float:
        return 1.0 / self.tokens_per_s if self.tokens_per_s > 0 else 0.0

    async def _first_event_wait(self, latency_s: float = 0.0) -> None:
        """The service's own latency, then a fault's extra delay or hold."""
        self.counts["waiting"] += 1
        try:
            if self.faults.hold is not None:
                await self.faults.hold.wait()
            delay_s = latency_s + self.faults.first_event_delay_s
            if delay_s:
                await asyncio.sleep(delay_s)
        finally:
            self.counts["waiting"] -= 1

    def _error(self, err: _Refused) -> web.Response:
        self.counts[err.code] += 1
        return web.json_response(
            {"message": str(err)},
            status=err.status,
            headers={"x-amzn-ErrorType": f"{err.code}:{_NAMESPACE}", "x-amzn-RequestId": str(uuid.uuid4())},
        )


def _events(answer: _Answer) -> list[tuple[bytes, bool]]:
    """The frames of one streamed answer, each with whether it is a text delta (paced by token_delay_s)."""

    def ev(event_type: str, members: dict[str, Any], paced: bool = False) -> tuple[bytes, bool]:
        return event_frame(event_type, members), paced

    frames = [ev("messageStart", {"role": "assistant"})]
    for piece in answer.pieces:
        frames.append(ev("contentBlockDelta", {"delta": {"text": piece}, "contentBlockIndex": 0}, True))
    if answer.pieces:
        frames.append(ev("contentBlockStop", {"contentBlockIndex": 0}))
    if answer.tool is not None:
        k = 1 if answer.pieces else 0
        start = {"toolUse": {"toolUseId": answer.tool["toolUseId"], "name": answer.tool["name"]}}
        frames.append(ev("contentBlockStart", {"start": start, "contentBlockIndex": k}))
        arguments = json.dumps(answer.tool["input"])
        half = len(arguments) // 2
        for part in (arguments[:half], arguments[half:]):
            frames.append(
                ev("contentBlockDelta", {"delta": {"toolUse": {"input": part}}, "contentBlockIndex": k})
            )
        frames.append(ev("contentBlockStop", {"contentBlockIndex": k}))
    frames.append(ev("messageStop", {"stopReason": answer.stop_reason}))
    frames.append(ev("metadata", {"usage": answer.usage, "metrics": {"latencyMs": 1}}))
    return frames


def _forced_tool(body: dict[str, Any]) -> str | None:
    """The tool a forced toolChoice (`any` or `tool`) names; None when the model may answer in text."""
    config = body.get("toolConfig") or {}
    choice = config.get("toolChoice") or {}
    if "tool" in choice:
        return str(choice["tool"]["name"])
    if "any" in choice and config.get("tools"):
        return str(config["tools"][0]["toolSpec"]["name"])
    return None


def _check_conversation(body: dict[str, Any]) -> None:
    """Bedrock's own checks on a conversation (the messages below are Bedrock's wording, shortened)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Refused(400, "ValidationException", "messages must be a non-empty list.")
    if messages[0].get("role") != "user":
        raise _Refused(400, "ValidationException", "A conversation must start with a user message.")
    tools_used = False
    for i, message in enumerate(messages):
        if i and message.get("role") == messages[i - 1].get("role"):
            raise _Refused(
                400, "ValidationException", "A conversation must alternate between user and assistant roles."
            )
        blocks = message.get("content")
        if not isinstance(blocks, list) or not blocks:
            raise _Refused(400, "ValidationException", f"messages.{i}.content must not be empty.")
        for block in blocks:
            if "text" in block and not block["text"].strip():
                raise _Refused(
                    400, "ValidationException", "The text field in the ContentBlock object is blank."
                )
            tools_used = tools_used or "toolUse" in block or "toolResult" in block
    if tools_used and not body.get("toolConfig"):
        raise _Refused(
            400,
            "ValidationException",
            "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
        )


# Bedrock's ValidationException for a model without assistant prefill (its message as Bedrock relays the
# model's own error, e.g. Claude Opus 4.6 on Bedrock: anomalyco/opencode issue #29760).
NO_PREFILL_MESSAGE = (
    "The model returned the following errors: This model does not support assistant message prefill. "
    "The conversation must end with a user message."
)


def _check_prefill(body: dict[str, Any], refused: bool) -> None:
    """A conversation ending with an assistant message is a prefill: refused by some models; for the others
    its text must not end with whitespace (Anthropic's check, which Bedrock relays)."""
    last = body["messages"][-1]
    if last.get("role") != "assistant":
        return
    if refused:
        raise _Refused(400, "ValidationException", NO_PREFILL_MESSAGE)
    texts = [b["text"] for b in last["content"] if "text" in b]
    if texts and texts[-1] != texts[-1].rstrip():
        raise _Refused(
            400,
            "ValidationException",
            "The model returned the following errors: final assistant content cannot end with trailing "
            "whitespace",
        )


@dataclass
class RunningStub:
    """A started stub: `url` for botocore's endpoint_url, `stub` for its state, `stop()` to end it."""

    stub: BedrockStub
    runner: web.AppRunner
    url: str

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_stub(host: str = "127.0.0.1", port: int = 0, **settings: Any) -> RunningStub:
    """Starts a stub on host:port (0 picks a free port); `settings` are BedrockStub's fields."""
    stub = BedrockStub(**settings)
    runner = web.AppRunner(stub.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return RunningStub(stub, runner, f"http://{host}:{bound}")
