"""Fixtures: the in-process fake OpenAI-compatible server with known timings (eksinfer.bench.fakeserver)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

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
