"""The vLLM /metrics parser against a real vLLM 0.32 page, and the scraper's staleness and health rules."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from eksinfer.gateway.config import ScrapeConfig
from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState
from eksinfer.gateway.scrape import Scraper, parse_metrics, parse_models
from tests.local_http import serve
from tests.waiting import FakeClock, until

SAMPLES = Path(__file__).parents[1] / "sim" / "data"  # vLLM 0.32 captures


@pytest.mark.skipif(not SAMPLES.exists(), reason="the vLLM golden samples are not on this machine")
def test_parses_real_vllm_metrics_page() -> None:
    metrics = parse_metrics((SAMPLES / "metrics_after_requests.txt").read_text())
    assert metrics.num_running == 0
    assert metrics.num_waiting == 0
    assert metrics.kv_usage == 0.0
    assert metrics.num_gpu_blocks == 65536
    assert metrics.block_size == 32
    models = parse_models((SAMPLES / "v1_models.json").read_bytes())
    assert list(models) == ["tiny-llama"]


def test_data_parallel_series_lora_and_deprecated_names() -> None:
    text = "\n".join(
        [
            "# HELP vllm:num_requests_running x",
            'vllm:num_requests_running{engine="0",model_name="m"} 3.0',
            'vllm:num_requests_running{engine="1",model_name="m"} 2.0',
            'vllm:num_requests_waiting{engine="0",model_name="m"} 7',
            'vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 99',
            'vllm:gpu_cache_usage_perc{engine="0"} 0.25',
            'vllm:gpu_cache_usage_perc{engine="1"} 0.75',
            'vllm:lora_requests_info{running_lora_adapters="old",waiting_lora_adapters=""} 10.0',
            'vllm:lora_requests_info{running_lora_adapters="a,b",waiting_lora_adapters="c"} 20.0',
            "vllm:num_requests_running_garbage{",
        ]
    )
    metrics = parse_metrics(text)
    assert metrics.num_running == 5
    assert metrics.num_waiting == 7  # the *_by_reason series is not added in
    assert metrics.kv_usage == 0.5
    assert metrics.lora_adapters == {"a", "b", "c"}  # the newest sample (timestamp 20) wins
    assert metrics.num_gpu_blocks is None
    first = parse_metrics('vllm:num_requests_running 3\nvllm:num_requests_running{engine="1"} 2\nother 1\n')
    assert first.num_running == 5  # a family at the very start of the page, ended by another name
    empty = parse_metrics("")
    assert (empty.num_running, empty.num_waiting, empty.kv_usage) == (None, None, None)


async def test_scraper_marks_stale_and_unhealthy_then_recovers() -> None:
    answers = {"ok": True}

    async def metrics(request: web.Request) -> web.Response:
        if not answers["ok"]:
            return web.Response(status=500)
        return web.Response(text='vllm:num_requests_waiting{engine="0"} 4\n')

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.get("/v1/models", models)])
    runner, url = await serve(app)
    state = EndpointState(id=EndpointId("e"), url=url)
    seen: dict[str, object] = {}
    health: list[bool] = []
    # Staleness is decided on the injected clock, which moves only when the test says; the scrape loop
    # itself runs in real time, and the test waits for each state it expects, never for a fixed time.
    clock = FakeClock()
    config = ScrapeConfig(interval_s=0.01, stale_after_s=1.0, unhealthy_after_failures=3)
    async with aiohttp.ClientSession() as session:
        scraper = Scraper(
            session, config, lambda s, cards: seen.update(cards), lambda s, h: health.append(h), clock=clock
        )
        task = asyncio.create_task(scraper.run(state))
        try:
            await until(lambda: state.num_waiting == 4 and "m" in seen, what="first good scrape")
            assert not state.stale
            answers["ok"] = False
            failures_before = scraper.failures_total
            await until(lambda: not state.healthy, what="unhealthy after consecutive failures")
            assert scraper.failures_total - failures_before >= 3
            assert not state.stale  # failures alone do not age the data: no time has passed
            clock.advance(1.5)
            await until(lambda: state.stale, what="stale once no good scrape for stale_after_s")
            answers["ok"] = True
            await until(lambda: state.healthy and not state.stale, what="recovered after one good scrape")
            assert health == [False, True]
        finally:
            task.cancel()
            await runner.cleanup()
