"""The P/D wire rules as pure functions, and the rewrite of the decode answer's cached-token count."""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import pytest

from eksinfer.errors import ConfigError
from eksinfer.gateway.config import parse_config
from eksinfer.gateway.pd.answer import CachedTokensAnswer
from eksinfer.gateway.pd.protocol import (
    PrefillAnswerError,
    cached_tokens_of,
    decode_body,
    prefill_body,
    read_prefill_answer,
    remote_prefill_pays,
)
from eksinfer.gateway.upstream import UpstreamResponse


@pytest.mark.parametrize(
    ("prompt", "cached", "threshold", "remote"),
    [
        (1000, 0, 256, True),
        (1000, 744, 256, True),  # exactly the threshold uncached: remote (llm-d: >=)
        (1000, 745, 256, False),
        (100, 0, 256, False),
        (5, 0, 0, True),  # 0: always remote
        (0, 0, 0, True),
        (10, 50, 1, False),  # a prediction above the prompt counts as all cached
    ],
)
def test_decider_threshold(prompt: int, cached: int, threshold: int, remote: bool) -> None:
    assert remote_prefill_pays(prompt, cached, threshold) is remote


def test_prefill_body_chat_and_completions() -> None:
    client = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 100,
        "max_completion_tokens": 90,
        "min_tokens": 5,
        "temperature": 0.2,
    }
    before = json.dumps(client)
    chat = prefill_body(client, "/v1/chat/completions")
    assert chat == {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "stream": False,
        "max_tokens": 1,
        "max_completion_tokens": 1,
        "temperature": 0.2,
        "kv_transfer_params": {
            "do_remote_decode": True,
            "do_remote_prefill": False,
            "remote_engine_id": None,
            "remote_block_ids": None,
            "remote_host": None,
            "remote_port": None,
        },
    }
    assert json.dumps(client) == before  # the client's body is kept for the decode hop
    completion = prefill_body({"model": "m", "prompt": "p"}, "/v1/completions")
    assert completion["max_tokens"] == 1
    assert "max_completion_tokens" not in completion
    assert completion["stream"] is False


def test_read_prefill_answer_and_decode_body() -> None:
    params = {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_block_ids": [1, 2],
        "remote_engine_id": "e",
        "remote_request_id": "r",
        "remote_host": "10.0.0.5",
        "remote_port": 5600,
        "tp_size": 8,
    }
    usage = {"prompt_tokens": 40, "prompt_tokens_details": {"cached_tokens": 32}}
    answer = json.dumps({"choices": [], "usage": usage, "kv_transfer_params": params}).encode()
    assert read_prefill_answer(answer) == (params, 32)
    body = {"model": "m", "prompt": "p", "stream": True}
    assert json.loads(decode_body(body, params)) == {**body, "kv_transfer_params": params}


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1]",
        json.dumps({"kv_transfer_params": None}).encode(),  # the one token ended the request: no blocks
        json.dumps({"kv_transfer_params": {"do_remote_prefill": False}}).encode(),
    ],
)
def test_unusable_prefill_answers(raw: bytes) -> None:
    with pytest.raises(PrefillAnswerError):
        read_prefill_answer(raw)


@pytest.mark.parametrize(
    ("usage", "cached"),
    [
        (None, 0),
        ({"prompt_tokens": 3, "prompt_tokens_details": None}, 0),
        ({"prompt_tokens_details": {"cached_tokens": 7}}, 7),
        ({"prompt_tokens_details": {"cached_tokens": "7"}}, 0),
    ],
)
def test_cached_tokens_of(usage: Any, cached: int) -> None:
    assert cached_tokens_of(usage) == cached


class _Chunks(UpstreamResponse):
    """An engine answer from a list of byte chunks (a stand-in for the pooled connection)."""

    __slots__ = ("_parts",)

    def __init__(self, parts: list[bytes], content_type: str) -> None:
        self._parts = deque(parts)
        self.status = 200
        self.headers = {"content-type": content_type}
        self.content_length = sum(map(len, parts)) if "json" in content_type else None

    async def readany(self) -> bytes:
        return self._parts.popleft() if self._parts else b""

    def close(self) -> None:
        pass


async def test_stream_usage_rewritten_across_split_chunks() -> None:
    token = b'data: {"choices":[{"delta":{"content":" a"}}]}\n\n'
    usage = {"prompt_tokens": 40, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 40}}
    last = b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n"
    stream = token + last + b"data: [DONE]\n\n"
    parts = [stream[:10], stream[10:70], stream[70:75], stream[75:]]
    answer = CachedTokensAnswer(_Chunks(parts, "text/event-stream"), cached_tokens=8)
    out = []
    while chunk := await answer.readany():
        out.append(chunk)
    events = b"".join(out).split(b"\n\n")
    assert events[0] == token.rstrip()
    assert json.loads(events[1][len(b"data: ") :])["usage"]["prompt_tokens_details"] == {"cached_tokens": 8}
    assert events[2:] == [b"data: [DONE]", b""]
    assert out[0] == token  # a complete event goes through at once


async def test_json_usage_rewritten_with_its_length() -> None:
    body = json.dumps({"choices": [], "usage": {"prompt_tokens": 9, "prompt_tokens_details": None}}).encode()
    answer = CachedTokensAnswer(_Chunks([body[:5], body[5:]], "application/json"), cached_tokens=4)
    out = await answer.read()
    assert json.loads(out)["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    assert answer.content_length == len(out)


def _config(pd: dict[str, Any]) -> dict[str, Any]:
    static = [{"url": "http://10.0.0.1:8000", "pool": "p"}, {"url": "http://10.0.0.2:8000", "pool": "d"}]
    return {"endpoints": {"static": static}, "disaggregation": {"kimi": pd}}


@pytest.mark.parametrize(
    ("pd", "field"),
    [
        ({"prefill_pool": "nope", "decode_pool": "d"}, "disaggregation.kimi.prefill_pool"),
        ({"prefill_pool": "p", "decode_pool": "p"}, "disaggregation.kimi"),
        ({"prefill_pool": "p", "decode_pool": "d", "min_uncached_tokens": -1}, "disaggregation.kimi"),
        ({"prefill_pool": "p", "decode_pool": "d", "prefill_timeout_s": 0}, "disaggregation.kimi"),
        ({"prefill_pool": "p", "decode_pool": "d", "typo": 1}, "disaggregation.kimi.typo"),
        # the first-token timeout (120 s) covers the prefill hop: a prefill timeout must end before it
        (
            {"prefill_pool": "p", "decode_pool": "d", "prefill_timeout_s": 120},
            "disaggregation.kimi.prefill_timeout_s",
        ),
    ],
)
def test_config_errors_name_the_field(pd: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_config(pd))
    assert (err.value.field or "").startswith(field)


def test_a_prefill_timeout_under_a_raised_first_token_timeout_is_accepted() -> None:
    config = _config({"prefill_pool": "p", "decode_pool": "d", "prefill_timeout_s": 150})
    config["server"] = {"first_token_timeout_s": 600}
    assert parse_config(config).disaggregation["kimi"].prefill_timeout_s == 150


def test_config_defaults() -> None:
    profile = parse_config(_config({"prefill_pool": "p", "decode_pool": "d"})).disaggregation["kimi"]
    assert (profile.min_uncached_tokens, profile.prefill_timeout_s, profile.prefill_profile) == (
        256,
        30.0,
        None,
    )
