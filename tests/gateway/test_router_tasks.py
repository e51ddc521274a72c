"""Background tasks the router starts are tracked: kept until they end, failures logged, and `stop()` leaves
none behind (the stops of replaced or removed KV-event subscribers used to be unreferenced tasks)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from eksinfer.gateway.routing import Router
from eksinfer.gateway.routing.tasks import TaskSet
from eksinfer.gateway.scheduling.config import load_routing_config
from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState
from tests.waiting import until

pytestmark = pytest.mark.timeout(30)


async def test_taskset_keeps_tasks_until_they_end_and_logs_failures(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet()
    gate = asyncio.Event()

    async def waits() -> None:
        await gate.wait()

    async def fails() -> None:
        raise RuntimeError("boom")

    tasks.spawn(waits(), name="waits")
    with caplog.at_level(logging.WARNING):
        tasks.spawn(fails(), name="fails")
        await until(lambda: len(tasks) == 1, what="the failed task dropped")
    assert "fails" in caplog.text
    assert "boom" in caplog.text
    gate.set()
    await until(lambda: len(tasks) == 0, what="the finished task dropped")


async def test_taskset_close_cancels_what_does_not_end() -> None:
    tasks = TaskSet()
    never = tasks.spawn(asyncio.Event().wait(), name="never")
    await tasks.close(timeout_s=0.01)
    assert never.cancelled()
    assert len(tasks) == 0


async def test_router_tracks_subscriber_stops_and_stop_leaves_no_task() -> None:
    router = Router(load_routing_config({"tokenizer": {"mode": "builtin"}}))
    router.start()
    ep = EndpointState(id=EndpointId("e0"), url="http://e0")
    router.endpoint_added(ep, "tcp://127.0.0.1:9")  # nothing listens: the subscriber only retries
    router.endpoint_added(ep, "tcp://127.0.0.1:10")  # replaces it: the old one stops in the background
    assert len(router.tasks) == 1
    router.endpoint_removed(ep.id)
    assert len(router.tasks) == 2
    await router.stop()
    assert len(router.tasks) == 0
    assert router.kv_feed.stats() == {}
