"""run_bench: drive the load shape, collect RequestRecords, read hit-rate counters, summarize.

Phases: check /v1/models, warm-up (config.warmup requests, same load shape, records flagged), scrape /metrics,
measured phase, scrape /metrics. Open loop (rate set): one task per arrival, each sleeping until its absolute
send time from arrivals.send_times; `concurrency` then caps requests in flight. Closed loop: `concurrency`
workers, each running conversations back to back. A conversation's later turns follow its previous reply
(plus think time) and go to the same target. Setting `stop` ends sending, cancels in-flight requests
(recorded as cancelled, left out of the figures) and still returns everything measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import msgspec

from eksinfer.bench.arrivals import send_times
from eksinfer.bench.client import Clock, RequestRecord, send
from eksinfer.bench.config import BenchConfig
from eksinfer.bench.hitrate import engine_bases, metrics_hit_rate, reset_prefix_cache, scrape
from eksinfer.bench.result import BenchResult, summarize
from eksinfer.bench.workloads import Conversation, conversations
from eksinfer.errors import UnknownNameError, UpstreamError

log = logging.getLogger(__name__)
ProgressFn = Callable[[RequestRecord], None]
_DUE_S = 1e-6  # an arrival this close to its send time is due
_encoder = msgspec.json.Encoder()


def api_base(url: str) -> str:
    """`http://h:p` or `http://h:p/v1` -> `http://h:p/v1`."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def build_body(
    config: BenchConfig, conv: Conversation, turn: int, history: list[tuple[str, str]]
) -> dict[str, Any]:
    """The OpenAI request for `turn` of `conv` with the earlier (user, assistant) exchanges."""
    t = conv.turns[turn]
    body: dict[str, Any] = {"model": config.model, "max_tokens": t.max_tokens, "stream": config.stream}
    if config.stream:
        body["stream_options"] = {"include_usage": True}
    if config.ignore_eos:
        body["ignore_eos"] = True
    if config.endpoint == "chat":
        messages = [{"role": "system", "content": conv.system}] if conv.system else []
        for user, reply in history:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        messages.append({"role": "user", "content": t.text})
        body["messages"] = messages
    else:
        parts = [conv.system] if conv.system else []
        for user, reply in history:
            parts += [user, reply]
        parts.append(t.text)
        body["prompt"] = "\n".join(parts)
    return body


async def check_model(session: aiohttp.ClientSession, base: str, model: str) -> None:
    """Fail fast with one line: target unreachable, not OpenAI-compatible, or serving other models."""
    url = api_base(base) + "/models"
    try:
        async with asyncio.timeout(10), session.get(url) as resp:
            if resp.status != 200:
                raise UpstreamError(f"{url} answered HTTP {resp.status}; is it an OpenAI-compatible server?")
            doc = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as err:
        reason = str(err) or type(err).__name__
        raise UpstreamError(f"cannot reach target {base}: {reason}") from None
    except ValueError:
        raise UpstreamError(f"{url} did not return JSON; is it an OpenAI-compatible server?") from None
    known = (
        [m.get("id", "") for m in doc.get("data", []) if isinstance(m, dict)] if isinstance(doc, dict) else []
    )
    if model not in known:
        raise UnknownNameError(f"model at {base}", model, known, field="model")


class _Phase:
    """One phase's sending: budget, deadline, targets, records."""

    def __init__(self, run: _Run, count: int | None, duration_s: float | None, warmup: bool) -> None:
        self.run, self.warmup = run, warmup
        self.remaining = count
        self.clock = run.clock
        self.t0 = self.clock()
        self.deadline = self.t0 + duration_s if duration_s else None

    def take(self) -> bool:
        """Consume one request of the budget if the phase still sends."""
        if self.run.stop.is_set() or (self.deadline is not None and self.clock() >= self.deadline):
            return False
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True

    async def conversation(self, conv: Conversation, scheduled_s: float, taken: bool) -> None:
        run, cfg = self.run, self.run.config
        target = next(run.targets)
        history: list[tuple[str, str]] = []
        headers = {cfg.session_header: f"conv-{conv.conversation_id}"} if cfg.session_header else None
        for i in range(len(conv.turns)):
            if (i > 0 or not taken) and not self.take():
                return
            if i > 0:
                if conv.think_time_s:
                    await asyncio.sleep(conv.think_time_s)
                scheduled_s = self.clock() - self.t0
            rec = RequestRecord(len(run.records), conv.conversation_id, i, target, warmup=self.warmup)
            rec.scheduled_s = scheduled_s
            run.records.append(rec)
            body = build_body(cfg, conv, i, history)
            async with run.limit if run.limit is not None else contextlib.nullcontext():
                rec.sent_s = self.clock() - self.t0
                await send(
                    run.session,
                    run.url_of[target],
                    body,
                    rec,
                    timeout_s=cfg.timeout_s,
                    keep_text=len(conv.turns) > 1,
                    headers=headers,
                    clock=self.clock,
                )
            if run.on_record is not None:
                run.on_record(rec)
            if not rec.ok:
                return
            history.append((conv.turns[i].text, rec.text))

    async def closed_loop(self, workers: int) -> None:
        async def worker() -> None:
            while self.take():
                await self.conversation(next(self.run.convs), self.clock() - self.t0, taken=True)

        await asyncio.gather(*(worker() for _ in range(workers)))

    async def open_loop(self, rate: float) -> None:
        cfg = self.run.config
        tasks: set[asyncio.Task[None]] = set()
        try:
            seed = cfg.seed + (1 if self.warmup else 0)
            for at in send_times(rate, cfg.arrival, seed, cfg.burstiness):
                # loop: event-loop timers may fire up to a clock tick early; a send due within a
                # microsecond goes now (float rounding of t0 + at must not wait for a timer that never
                # moves a coarse clock)
                while (delay := self.t0 + at - self.clock()) > _DUE_S and not self.run.stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.run.stop.wait(), delay)
                if not self.take():
                    break
                task = asyncio.create_task(self.conversation(next(self.run.convs), at, taken=True))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()


class _Run:
    def __init__(
        self,
        config: BenchConfig,
        session: aiohttp.ClientSession,
        stop: asyncio.Event,
        on_record: ProgressFn | None,
        convs: Iterator[Conversation],
        clock: Clock,
    ) -> None:
        self.config, self.session, self.stop, self.on_record = config, session, stop, on_record
        self.clock = clock
        self.records: list[RequestRecord] = []
        self.convs = convs
        self.targets = itertools.cycle(config.target_urls)
        path = "/chat/completions" if config.endpoint == "chat" else "/completions"
        self.url_of = {u: api_base(u) + path for u in config.target_urls}
        self.limit = asyncio.Semaphore(config.concurrency) if config.rate and config.concurrency else None

    async def phase(self, count: int | None, duration_s: float | None, warmup: bool) -> None:
        phase = _Phase(self, count, duration_s, warmup)
        shape = (
            phase.open_loop(self.config.rate)
            if self.config.rate
            else phase.closed_loop(self.config.concurrency or 1)
        )
        task = asyncio.create_task(shape)
        stopper = asyncio.create_task(self.stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()  # stop requested: cut in-flight requests, keep what finished
        with contextlib.suppress(asyncio.CancelledError):
            await task
        stopper.cancel()


def make_session(config: BenchConfig) -> aiohttp.ClientSession:
    """A session tuned for load generation: unlimited pooled keep-alive connections, no total timeout."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
    headers = {"Content-Type": "application/json", **config.headers}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    return aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        json_serialize=lambda obj: _encoder.encode(obj).decode(),
    )


async def run_bench(
    config: BenchConfig,
    *,
    stop: asyncio.Event | None = None,
    on_record: ProgressFn | None = None,
    clock: Clock = time.perf_counter,
) -> BenchResult:
    """Run one benchmark; raises UpstreamError/UnknownNameError before sending if the target is wrong.
    `clock` times everything (tests pass the event loop's fake clock to measure in virtual time)."""
    stop = stop or asyncio.Event()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    async with make_session(config) as session:
        # a replay dataset is read here, off the event loop, so a bad file fails before any request
        convs = await asyncio.to_thread(conversations, config)
        run = _Run(config, session, stop, on_record, convs, clock)
        if config.check_model:
            for base in config.target_urls:
                await check_model(session, base, config.model)
        if config.reset_prefix_cache:
            await reset_prefix_cache(session, engine_bases(config.metrics_urls, config.target_urls))
        if config.warmup:
            await run.phase(config.warmup, None, warmup=True)
        before = await scrape(session, config.metrics_urls) if config.metrics_urls else {}
        await run.phase(config.num_requests, config.duration_s, warmup=False)
        after = await scrape(session, config.metrics_urls) if config.metrics_urls else {}
    summary = summarize(run.records, config.slo)
    scrape_doc: dict[str, Any] = {}
    if config.metrics_urls:
        scrape_doc = {"before": before, "after": after, **metrics_hit_rate(before, after)}
        summary["hit_rate"]["metrics"] = scrape_doc["hit_rate"]
    return BenchResult(
        config=config.model_dump(mode="json"),
        records=run.records,
        summary=summary,
        started_at=started,
        interrupted=stop.is_set(),
        metrics_scrape=scrape_doc,
    )
