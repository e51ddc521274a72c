"""The Bedrock stub's wire format, checked with botocore's own event-stream parser and raw HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from eksinfer.sim.bedrock import StubFaults, start_stub
from eksinfer.sim.bedrock.eventstream import encode_message, event_frame, exception_frame
from eksinfer.sim.bedrock.stub import RunningStub

BODY = {"messages": [{"role": "user", "content": [{"text": "hi"}]}], "inferenceConfig": {"maxTokens": 3}}


@pytest.fixture
async def stub() -> AsyncIterator[RunningStub]:
    running = await start_stub(output_tokens=5, cache_read_input_tokens=7)
    yield running
    await running.stop()


def decode(raw: bytes) -> list[tuple[dict[str, Any], Any]]:
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    return [(m.headers, json.loads(m.payload)) for m in buffer]


def test_frames_decode_with_botocore() -> None:
    raw = event_frame("contentBlockDelta", {"delta": {"text": "héllo"}, "contentBlockIndex": 0})
    raw += exception_frame("throttlingException", "slow down")
    [(h1, p1), (h2, p2)] = decode(raw)
    assert h1 == {
        ":event-type": "contentBlockDelta",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert p1 == {"delta": {"text": "héllo"}, "contentBlockIndex": 0}
    assert h2[":message-type"] == "exception"
    assert h2[":exception-type"] == "throttlingException"
    assert p2 == {"message": "slow down"}


def test_a_flipped_byte_fails_botocores_checksum() -> None:
    raw = bytearray(encode_message({":event-type": "messageStop"}, b'{"stopReason": "end_turn"}'))
    raw[-6] ^= 0x01  # inside the payload: the message CRC no longer matches
    with pytest.raises(ChecksumMismatch):
        decode(bytes(raw))


async def test_converse_stream_over_http(stub: RunningStub) -> None:
    url = f"{stub.url}/model/some.model-v1%3A0/converse-stream"
    async with aiohttp.ClientSession() as http, http.post(url, json=BODY) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/vnd.amazon.eventstream"
        assert resp.headers["x-amzn-RequestId"]
        messages = decode(await resp.read())
    names = [h[":event-type"] for h, _ in messages]
    assert names == ["messageStart"] + ["contentBlockDelta"] * 3 + [
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert messages[-2][1] == {"stopReason": "max_tokens"}
    assert messages[-1][1]["usage"] == {
        "inputTokens": 1,
        "cacheReadInputTokens": 7,
        "outputTokens": 3,
        "totalTokens": 4,
    }
    assert stub.stub.recorded[-1].model_id == "some.model-v1:0"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": [{"role": "assistant", "content": [{"text": "x"}]}]}, "must start with a user message"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"text": "a"}]},
                    {"role": "user", "content": [{"text": "b"}]},
                ]
            },
            "must alternate",
        ),
        ({"messages": [{"role": "user", "content": [{"text": "  "}]}]}, "is blank"),
        (
            {"messages": [{"role": "user", "content": [{"toolResult": {"toolUseId": "t", "content": []}}]}]},
            "toolConfig field must be defined",
        ),
    ],
)
async def test_bedrock_checks_answered_in_aws_error_shape(
    stub: RunningStub, body: dict[str, Any], message: str
) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{stub.url}/model/m/converse", json=body) as resp:
        assert resp.status == 400
        assert resp.headers["x-amzn-ErrorType"].startswith("ValidationException:")
        assert resp.headers["x-amzn-RequestId"]
        assert message in (await resp.json())["message"]


async def test_fault_shares_are_drawn_per_request(stub: RunningStub) -> None:
    stub.stub.faults = StubFaults(throttle_share=0.5)
    statuses = []
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            async with http.post(f"{stub.url}/model/m/converse", json=BODY) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert resp.headers["x-amzn-ErrorType"].startswith("ThrottlingException")
    assert set(statuses) == {200, 429}
    assert 60 <= statuses.count(429) <= 140  # seeded: the same draws every run
    assert stub.stub.counts["ThrottlingException"] == statuses.count(429)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--throttle-share", "2"], "--throttle-share"),
        (["--token-delay-s", "x"], "--token-delay-s"),
        (["--tokens-per-s", "-1"], "--tokens-per-s"),
        (["--first-token-s", "x"], "--first-token-s"),
        (["--break-after-events", "0"], "--break-after-events"),
        (["--break-mode", "explode"], "--break-mode"),
    ],
)
def test_cli_refuses_bad_values_naming_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from eksinfer.sim.bedrock.__main__ import parse

    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in error
    assert parse(["--throttle-share", "0.25"]).throttle_share == 0.25


async def test_latency_is_configurable_and_reported_like_bedrock_does() -> None:
    running = await start_stub(output_tokens=5, first_token_s=0.05, tokens_per_s=100.0)
    try:
        url = f"{running.url}/model/m/converse"
        async with aiohttp.ClientSession() as http, http.post(url, json=BODY) as resp:
            answer = await resp.json()
    finally:
        await running.stop()
    # 3 tokens (maxTokens) after a 50 ms first token at 100 tokens/s: Bedrock's own `metrics.latencyMs`.
    assert answer["metrics"]["latencyMs"] == 80
    spread = await start_stub(first_token_s=1.0, latency_jitter=0.2, seed=3)
    try:
        scales = [spread.stub._latency_scale() for _ in range(200)]
    finally:
        await spread.stop()
    assert all(0.8 <= s <= 1.2 for s in scales)
    assert len(set(scales)) > 100  # drawn per request, not fixed


def test_cli_defaults_to_a_published_bedrock_latency() -> None:
    from eksinfer.sim.bedrock.__main__ import parse

    args = parse([])
    assert (args.first_token_s, args.tokens_per_s, args.latency_jitter) == (0.76, 60.0, 0.2)
    assert parse(["--first-token-s", "0", "--tokens-per-s", "0"]).tokens_per_s == 0.0
