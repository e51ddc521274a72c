"""Flags in request bodies read as vLLM's pydantic reads them: "false" is False, "x" is a 400.

The simulator used to take `bool(value)`: `"stream": "false"` streamed, `"stream": "x"` was accepted."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.sim.conftest import StartCluster


@pytest.mark.parametrize(
    ("extra", "status", "streamed"),
    [
        ({"stream": "false"}, 200, False),
        ({"stream": "true"}, 200, True),
        ({"stream": 0}, 200, False),
        ({"stream": "x"}, 400, None),
        ({"stream": 2}, 400, None),
        ({"stream": [True]}, 400, None),
        ({"ignore_eos": "maybe"}, 400, None),
        ({"echo": {}}, 400, None),
        ({"stream": True, "stream_options": {"include_usage": "x"}}, 400, None),
    ],
)
async def test_boolean_fields(
    start: StartCluster, extra: dict[str, Any], status: int, streamed: bool | None
) -> None:
    cluster = await start()
    body = {"prompt": "hi", "max_tokens": 2, **extra}
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(cluster.urls[0] + "/v1/completions", json=body)
        assert r.status_code == status, r.text
        if status == 400:
            error = r.json()["error"]
            assert error["code"] == 400
            assert error["message"].endswith("must be a boolean")
        else:
            assert r.headers["content-type"].startswith("text/event-stream") is streamed
        ok = await client.post(cluster.urls[0] + "/v1/completions", json={"prompt": "hi", "max_tokens": 2})
        assert ok.status_code == 200  # and it keeps serving


@pytest.mark.parametrize(
    ("extra", "status", "param", "message"),
    [
        ({"temperature": "0.5"}, 200, None, None),  # pydantic's lax mode parses numeric strings
        ({"temperature": 0}, 200, None, None),
        ({"temperature": "warm"}, 400, "body.temperature", "unable to parse string as a number"),
        ({"temperature": [1]}, 400, "body.temperature", "Input should be a valid number"),
        ({"temperature": -0.1}, 400, "temperature", "temperature must be non-negative, got -0.1."),
        ({"top_p": 0}, 400, "top_p", "top_p must be in (0, 1], got 0.0."),
        ({"top_p": 1.5}, 400, "top_p", "top_p must be in (0, 1], got 1.5."),
        ({"prompt": [5, 6, 10**9]}, 400, None, "Token id 1000000000 is out of vocabulary"),
        ({"prompt": [5, -1]}, 400, None, "Token id -1 is out of vocabulary"),
    ],
)
async def test_sampling_fields_and_token_ids(
    start: StartCluster, extra: dict[str, Any], status: int, param: str | None, message: str | None
) -> None:
    """vLLM 0.32 checks these in its request model and `SamplingParams`, and prompt ids against the vocab
    (v1 `InputProcessor._validate_model_input`); the simulator answered 200 to all of them before."""
    r = await _complete(start, extra)
    assert r.status_code == status, r.text
    if status == 400:
        error = r.json()["error"]
        assert error["param"] == param
        assert message is not None
        assert message in error["message"]


async def _complete(start: StartCluster, extra: dict[str, Any]) -> httpx.Response:
    cluster = await start()
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(
            cluster.urls[0] + "/v1/completions", json={"prompt": "hi", "max_tokens": 2, **extra}
        )
