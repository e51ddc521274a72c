"""Fixtures: simulated engines started in-process on 127.0.0.1 with free ports, stopped after each test."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import openai
import pytest

from eksinfer.kvcache.events import KVEventsConfig
from eksinfer.sim.cluster import SimCluster, start_cluster
from eksinfer.sim.config import SimOptions

StartCluster = Callable[..., Awaitable[SimCluster]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_run(n: int) -> int:
    """A base port with n consecutive free ports after it (replicas offset event ports by their index)."""
    for _ in range(50):
        base = free_port()
        if base + n >= 65535:
            continue
        ok = True
        for i in range(1, n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", base + i))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no run of free ports")


def events_config(
    replicas: int = 1, *, replay: bool = True, topic: str = "kv@{host}:{port}@{model}"
) -> KVEventsConfig:
    """vLLM's --kv-events-config with wildcard (bound) endpoints on free port runs."""
    raw: dict[str, Any] = {
        "enable_kv_cache_events": True,
        "endpoint": f"tcp://*:{free_port_run(replicas)}",
        "topic": topic,
    }
    if replay:
        raw["replay_endpoint"] = f"tcp://*:{free_port_run(replicas)}"
    return KVEventsConfig.from_json(json.dumps(raw))


BASE = SimOptions(port=0, time_scale=0.0, num_gpu_blocks=256, max_model_len=2048, natural_output_tokens=0)


@pytest.fixture
async def start() -> AsyncIterator[StartCluster]:
    started: list[SimCluster] = []

    async def _start(replicas: int = 1, **changes: Any) -> SimCluster:
        cluster = await start_cluster(replace(BASE, **changes), replicas)
        started.append(cluster)
        return cluster

    yield _start
    for cluster in started:
        await cluster.stop()


def set_slow_token_s(cluster: SimCluster, seconds: float) -> None:
    """Changes the slow-token fault of every engine of `cluster` while it runs (read every step): a test
    holds requests in flight with a long step, looks at them, then lets them finish at full speed."""
    for engine in cluster.engines:
        engine.options = replace(engine.options, faults=replace(engine.options.faults, slow_token_s=seconds))


Sdk = Callable[[str], openai.AsyncOpenAI]


@pytest.fixture
async def client() -> AsyncIterator[Sdk]:
    """Makes `openai` SDK clients for a base URL, and closes them after the test."""
    made: list[openai.AsyncOpenAI] = []

    def make(url: str) -> openai.AsyncOpenAI:
        made.append(openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0))
        return made[-1]

    yield make
    for sdk in made:
        await sdk.close()
