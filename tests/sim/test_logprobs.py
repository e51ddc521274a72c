"""Logprobs, prompt_logprobs, echo and n > 1 from the simulator through the `openai` SDK.

Shapes are vLLM 0.32's (src/eksinfer/sim/logprobs.py); values must be log-probabilities (<= 0), each
top list sorted, and the emitted token must be the one reported.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import httpx

from tests.sim.conftest import Sdk, StartCluster

ASK = [{"role": "user", "content": "Tell me about the sea"}]


def sorted_desc(values: list[float]) -> bool:
    return all(a >= b for a, b in itertools.pairwise(values))


async def test_chat_logprobs_and_top_logprobs(start: StartCluster, client: Sdk) -> None:
    cluster = await start()
    out = await client(cluster.urls[0]).chat.completions.create(
        model="llama-3.1-8b", messages=ASK, max_tokens=6, logprobs=True, top_logprobs=3
    )
    choice = out.choices[0]
    assert choice.logprobs is not None
    content = choice.logprobs.content
    assert content is not None
    assert len(content) == 6
    assert "".join(entry.token for entry in content) == choice.message.content
    for entry in content:
        assert entry.logprob <= 0
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3
        values = [t.logprob for t in entry.top_logprobs]
        assert sorted_desc(values)
        assert all(v <= 0 for v in values)
        assert sum(math.exp(v) for v in values) <= 1.0 + 1e-9
        assert entry.top_logprobs[0].token == entry.token  # the emitted token is the favourite


async def test_chat_logprobs_default_to_no_alternatives_and_stream(start: StartCluster, client: Sdk) -> None:
    cluster = await start()
    sdk = client(cluster.urls[0])
    whole = await sdk.chat.completions.create(model="llama-3.1-8b", messages=ASK, max_tokens=4, logprobs=True)
    assert whole.choices[0].logprobs is not None
    assert whole.choices[0].logprobs.content is not None
    assert [e.top_logprobs for e in whole.choices[0].logprobs.content] == [[]] * 4
    stream = await sdk.chat.completions.create(
        model="llama-3.1-8b", messages=ASK, max_tokens=4, logprobs=True, top_logprobs=2, stream=True
    )
    streamed: list[Any] = []
    async for chunk in stream:
        for c in chunk.choices:
            if c.logprobs is not None and c.logprobs.content:
                streamed += c.logprobs.content
    assert len(streamed) == 4
    assert [e.logprob for e in streamed] == [e.logprob for e in whole.choices[0].logprobs.content]  # seeded


async def test_completion_logprobs_echo_and_prompt_logprobs(start: StartCluster, client: Sdk) -> None:
    cluster = await start()
    sdk = client(cluster.urls[0])
    out = await sdk.completions.create(
        model="llama-3.1-8b",
        prompt="The sea is",
        max_tokens=5,
        logprobs=2,
        echo=True,
        extra_body={"prompt_logprobs": 1},
    )
    choice = out.choices[0]
    assert choice.text.startswith("The sea is")
    lps = choice.logprobs
    assert lps is not None
    assert lps.tokens is not None
    assert lps.token_logprobs is not None
    assert lps.top_logprobs is not None
    assert lps.text_offset is not None
    prompt_len = len(lps.tokens) - 5
    assert prompt_len >= 3
    assert lps.token_logprobs[0] is None  # the first prompt token has no context
    assert lps.top_logprobs[0] is None
    assert all(v is not None and v <= 0 for v in lps.token_logprobs[1:])
    assert all(len(d) == 2 and sorted_desc(list(d.values())) for d in lps.top_logprobs[1:] if d is not None)
    assert lps.text_offset == sorted(lps.text_offset)
    assert "".join(lps.tokens) == choice.text
    prompt_lps: Any = choice.model_extra and choice.model_extra["prompt_logprobs"]
    assert prompt_lps[0] is None
    assert len(prompt_lps) == prompt_len
    for position in prompt_lps[1:]:
        [(_, entry)] = position.items()
        assert entry["rank"] == 1
        assert entry["logprob"] <= 0


async def test_prompt_logprobs_and_stream_is_vllms_400(start: StartCluster) -> None:
    cluster = await start()
    async with httpx.AsyncClient() as http:
        bad = await http.post(
            cluster.urls[0] + "/v1/completions", json={"prompt": "x", "stream": True, "prompt_logprobs": 1}
        )
        too_many = await http.post(
            cluster.urls[0] + "/v1/chat/completions",
            json={"messages": ASK, "logprobs": True, "top_logprobs": 21},
        )
        orphan = await http.post(
            cluster.urls[0] + "/v1/chat/completions", json={"messages": ASK, "top_logprobs": 2}
        )
    assert bad.status_code == 400
    assert "not available when `stream=True`" in bad.json()["error"]["message"]
    assert too_many.status_code == 400
    assert "greater than max allowed: 20" in too_many.json()["error"]["message"]
    assert orphan.status_code == 400
    assert orphan.json()["error"]["param"] == "top_logprobs"


async def test_n_choices_differ_and_usage_counts_them_all(start: StartCluster, client: Sdk) -> None:
    cluster = await start()
    sdk = client(cluster.urls[0])
    out = await sdk.chat.completions.create(model="llama-3.1-8b", messages=ASK, max_tokens=5, n=3, seed=4)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert len({c.message.content for c in out.choices}) == 3
    assert out.usage is not None
    assert out.usage.completion_tokens == 15
    stream = await sdk.completions.create(
        model="llama-3.1-8b",
        prompt="The sea",
        max_tokens=4,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = ["", ""]
    finishes: list[tuple[int, str]] = []
    usage = None
    async for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason:
                finishes.append((c.index, c.finish_reason))
        usage = chunk.usage or usage
    assert sorted(finishes) == [(0, "length"), (1, "length")]
    assert usage is not None
    assert usage.completion_tokens == 8
    assert texts[0] != texts[1]
