"""Fuzz tier: Hypothesis bodies against the OpenAI routes of the simulator and of the gateway in front of it
(the real router, kv-aware with the built-in tokenizer). The only acceptable outcomes are a 2xx or a 4xx with
an OpenAI-style error body; a 5xx, a body that is not JSON or a dropped connection fails the test.

Bounded: `FUZZ_EXAMPLES` examples per route (15 by default, so the tier costs seconds in `make test`);
EKSINFER_FUZZ_EXAMPLES=2000 runs a longer session. Servers run on a loop in a background thread so that
Hypothesis drives plain synchronous tests."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eksinfer.gateway.config import parse_config
from eksinfer.gateway.runtime import GatewayRuntime, build_runtime
from eksinfer.sim.cluster import SimCluster, start_cluster
from tests.sim.conftest import BASE

FUZZ_EXAMPLES = int(os.environ.get("EKSINFER_FUZZ_EXAMPLES", "15"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
pytestmark = pytest.mark.timeout(300)

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
)
any_json = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", ""]) | st.text(max_size=5)},
    optional={
        "content": st.text(max_size=200)
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=50)}), max_size=3)
        | any_json
    },
)
knobs = st.fixed_dictionaries(
    {},
    optional={
        "max_tokens": st.integers(min_value=-5, max_value=40) | any_json,
        "stream": st.booleans() | any_json,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | any_json}),
        "temperature": st.floats(allow_nan=False) | any_json,
        "top_p": st.floats(allow_nan=False) | any_json,
        "ignore_eos": st.booleans() | any_json,
        "seed": st.integers() | any_json,
        "echo": st.booleans() | any_json,
        "n": st.integers(min_value=-1, max_value=3),
        "logprobs": any_json,
    },
)
model = st.sampled_from(["tiny", "other"]) | any_json


def _bodies(field: str, value: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    shaped = st.builds(
        lambda m, v, k, drop: json.dumps(
            {key: val for key, val in {"model": m, field: v, **k}.items() if key not in drop}
        ).encode(),
        model,
        value,
        knobs,
        st.sets(st.sampled_from(["model", field]), max_size=1),
    )
    junk = st.binary(max_size=64) | any_json.map(lambda v: json.dumps(v).encode())
    return st.one_of(shaped, shaped, junk)


chat_bodies = _bodies("messages", st.lists(message, max_size=4) | any_json)
completion_bodies = _bodies(
    "prompt",
    st.text(max_size=300)
    | st.lists(st.integers(min_value=-2, max_value=80_000), max_size=20)
    | st.lists(st.text(max_size=20), max_size=3)
    | any_json,
)


class Stack:
    """A simulator (and a gateway in front of it) on a loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.cluster: SimCluster | None = None
        self.gateway: GatewayRuntime | None = None

    def run(self, coro: Awaitable[Any]) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout=60)

    async def start(self) -> None:
        options = BASE.__class__(**{**_fields(BASE), "served_model_name": ("tiny",)})
        self.cluster = await start_cluster(options)
        config = parse_config(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "endpoints": {"static": [{"url": self.cluster.urls[0]}]},
                "scrape": {"interval_s": 0.05},
                "routing": {"preset": "kv-aware", "tokenizer": {"mode": "builtin"}},
            }
        )
        self.gateway = build_runtime(config)
        await self.gateway.start()
        await self.gateway.wait_ready(10)

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop()
        if self.cluster is not None:
            await self.cluster.stop()


def _fields(options: Any) -> dict[str, Any]:
    return {name: getattr(options, name) for name in options.__dataclass_fields__}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    s = Stack()
    s.run(s.start())
    yield s
    s.run(s.stop())
    s.run(s.loop.shutdown_default_executor())
    s.loop.call_soon_threadsafe(s.loop.stop)
    s.thread.join(timeout=10)
    s.loop.close()


def _check(response: httpx.Response) -> None:
    status = response.status_code
    assert status < 500, (status, response.text[:500])
    if 200 <= status < 300:
        return
    assert 400 <= status < 500, status
    error = response.json()["error"]
    assert isinstance(error["message"], str), error
    assert error["message"]
    assert "type" in error


def _post(url: str, body: bytes) -> httpx.Response:
    with httpx.Client(timeout=30) as client:
        response = client.post(url, content=body, headers={"Content-Type": "application/json"})
        response.read()
        return response


ROUTES: list[tuple[str, st.SearchStrategy[bytes]]] = [
    ("/v1/chat/completions", chat_bodies),
    ("/v1/completions", completion_bodies),
]
TARGETS: dict[str, Callable[[Stack], str]] = {
    "simulator": lambda s: s.cluster.urls[0] if s.cluster else "",
    "gateway": lambda s: f"http://127.0.0.1:{s.gateway.port}" if s.gateway else "",
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("path", "bodies"), ROUTES, ids=[r[0] for r in ROUTES])
def test_openai_routes_answer_2xx_or_an_openai_4xx(
    stack: Stack, target: str, path: str, bodies: st.SearchStrategy[bytes]
) -> None:
    base = TARGETS[target](stack)

    @FUZZ
    @given(body=bodies)
    def fuzz(body: bytes) -> None:
        _check(_post(base + path, body))

    fuzz()


@FUZZ
@given(body=_bodies("prompt", st.text(max_size=100) | any_json) | chat_bodies)
def test_simulator_tokenize_answers_2xx_or_4xx(stack: Stack, body: bytes) -> None:
    _check(_post(stack.cluster.urls[0] + "/tokenize", body))  # type: ignore[union-attr]
