"""What an operator sees when an engine goes bad: why scrapes fail and that requests time out, as warnings
limited to one line per endpoint and interval (the probe found both at debug level or not logged at all)."""

from __future__ import annotations

import logging

import aiohttp
import httpx
import pytest

from eksinfer.gateway.config import ScrapeConfig
from eksinfer.gateway.scheduling.framework import EndpointState
from eksinfer.gateway.scrape import Scraper
from eksinfer.ratelog import RateLimitedLog
from tests.gateway.test_hostile import CHAT, port, start
from tests.gateway.test_proxy_fakes import EngineBehaviour, FakeEngine
from tests.sim.conftest import free_port
from tests.waiting import FakeClock

pytestmark = pytest.mark.timeout(60)


async def test_scrape_failures_are_warnings_one_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="eksinfer.gateway.scrape")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    state = EndpointState(id="dead", url=dead)
    async with aiohttp.ClientSession() as session:
        clock = FakeClock()
        scraper = Scraper(session, ScrapeConfig(), lambda s, cards: None, clock=clock)
        for _ in range(5):
            assert not await scraper.scrape_once(state, models=False)
        clock.advance(10.0)
        assert not await scraper.scrape_once(state, models=False)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("scrape of dead failed: ")
    assert "Cannot connect" in lines[0] or "refused" in lines[0].lower()
    assert lines[1].endswith("(4 more since the last)")


async def test_timeouts_are_logged_once_per_endpoint(caplog: pytest.LogCaptureFixture) -> None:
    engine = await FakeEngine(behaviour=EngineBehaviour(hang=True)).start()
    runtime = await start([engine.url], server={"first_token_timeout_s": 0.2})
    caplog.set_level(logging.WARNING, logger="eksinfer.gateway.proxy")
    assert runtime.proxy is not None  # a frozen clock: the verdict cannot depend on how long requests take
    runtime.proxy._warn = RateLimitedLog(logging.getLogger("eksinfer.gateway.proxy"), clock=FakeClock())
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(3):
                r = await client.post(f"http://127.0.0.1:{port(runtime)}/v1/chat/completions", content=CHAT)
                assert r.status_code == 504
    finally:
        await runtime.stop()
        await engine.stop()
    lines = [r.getMessage() for r in caplog.records if "timed out" in r.getMessage()]
    assert lines == [f"endpoint {engine.url.removeprefix('http://')} timed out on its first bytes: 504"]
