"""Fixtures: the in-process fake OpenAI-compatible server with known timings (eksinfer.bench.fakeserver)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import looptime
import pytest

from eksinfer.bench.fakeserver import FakeBackend, start

ServerFactory = Callable[..., AbstractAsyncContextManager[tuple[FakeBackend, str]]]


@asynccontextmanager
async def _serve(**kwargs: object) -> AsyncIterator[tuple[FakeBackend, str]]:
    fake = FakeBackend(**kwargs)  # type: ignore[arg-type]
    runner, url = await start(fake)
    try:
        yield fake, url
    finally:
        await runner.cleanup()


@pytest.fixture
def fake_server() -> ServerFactory:
    """`async with fake_server(ttft_s=0.05, itl_s=0.01) as (fake, url): ...`"""
    return _serve


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests marked `virtual_time` run on a looptime loop: its clock moves only by the sleeps and timers
    due, socket I/O takes no time on it, so timings measured on `loop.time` are exact on any machine."""
    if item.get_closest_marker("virtual_time"):
        return {"virtual-time": looptime.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
