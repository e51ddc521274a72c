"""Reads each engine's vLLM `/metrics` and `/v1/models` in the background and fills its `EndpointState`.

Signals (those llm-d's endpoint picker scrapes, llm-d inference scheduler `pkg/epp/server/options.go`):
`vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc` (0..1),
`vllm:cache_config_info{num_gpu_blocks, block_size}`, `vllm:lora_requests_info{running_lora_adapters,
waiting_lora_adapters}` (the value is a timestamp: the newest sample wins). A data-parallel engine reports one
series per `engine` label: requests are summed, KV usage is the mean. For shedding's prefill fit
(resilience/prefill.py), the `_count` and `_sum` of `vllm:request_prefill_time_seconds` and the `_sum` of
`vllm:request_prefill_kv_computed_tokens`, the `_count` and `_sum` of `vllm:inter_token_latency_seconds`
(each summed over engines; read every `HISTOGRAMS_EVERY` scrapes). The parser finds only the lines it
needs, so a 56 KB page (tests/sim/data/metrics_after_requests.txt) costs tens of microseconds. Defaults follow
llm-d (refresh 50 ms, stale after 2 s); ours refresh every 200 ms because the gateway also tracks its own
in-flight work between scrapes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

from eksinfer.gateway.config import ScrapeConfig
from eksinfer.gateway.scheduling.framework import EndpointState
from eksinfer.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_CACHE_LABELS = re.compile(r'(?<![\w])(block_size|num_gpu_blocks)="(\d+)"')
_WANTED = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",  # deprecated name of kv_cache_usage_perc in older vLLM
    "vllm:cache_config_info",
    "vllm:lora_requests_info",
)
# Histograms read for shedding's prefill fit: family -> the series summed over its children. prometheus_client
# writes each child's buckets, `_count` and `_sum` together, so a data-parallel engine's `_sum` lines are not
# adjacent: every occurrence inside the family's block (up to the next `# ` line) is read.
_HISTOGRAMS = (
    "vllm:request_prefill_time_seconds",
    "vllm:request_prefill_kv_computed_tokens",
    "vllm:inter_token_latency_seconds",
)
MODELS_EVERY = 25  # re-read /v1/models every 25 scrapes (5 s at the default 200 ms) to see new LoRA adapters
# The histograms every 5 scrapes (1 s at the default 200 ms): the fit learns from differences, which need no
# finer grain, and reading them costs about 45 us of the page's 120 (measured on the 56 KB vLLM 0.32 page).
HISTOGRAMS_EVERY = 5


@dataclass(slots=True)
class ScrapedMetrics:
    """The few numbers routing needs from one /metrics page; None where the page lacks the series."""

    num_running: int | None = None
    num_waiting: int | None = None
    kv_usage: float | None = None
    num_gpu_blocks: int | None = None
    block_size: int | None = None
    lora_adapters: frozenset[str] = frozenset()
    prefill_requests: float | None = None
    prefill_seconds: float | None = None
    prefill_tokens: float | None = None
    itl_count: float | None = None
    itl_seconds: float | None = None


@dataclass(slots=True)
class _Acc:
    running: float = 0.0
    waiting: float = 0.0
    kv: list[float] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)


def _split_sample(line: str) -> tuple[str, str, float] | None:
    """`name{labels} value [timestamp]` -> (name, labels text, value); None for lines it cannot read."""
    brace = line.find("{")
    if brace >= 0:
        close = line.rfind("}")
        if close < brace:
            return None
        name, labels, rest = line[:brace], line[brace + 1 : close], line[close + 1 :]
    else:
        name, _, rest = line.partition(" ")
        labels = ""
    parts = rest.split()
    if not parts:
        return None
    try:
        return name, labels, float(parts[0])
    except ValueError:
        return None


def _wanted_lines(text: str) -> list[str]:
    """The sample lines of the wanted families. The text format keeps each family's lines together
    (https://prometheus.io/docs/instrumenting/exposition_formats/), so one `str.find` (C speed) reaches a
    family and its lines are read until another name starts, instead of checking all 661 lines in Python."""
    lines = []
    for name in _WANTED:
        pos = 0 if text.startswith(name) else text.find("\n" + name) + 1
        if pos == 0 and not text.startswith(name):
            continue  # not on this page
        while True:
            end = text.find("\n", pos)
            lines.append(text[pos:] if end < 0 else text[pos:end])
            if end < 0 or not text.startswith(name, end + 1):
                break
            pos = end + 1
    return lines


def _histogram_totals(text: str, family: str) -> tuple[float | None, float | None]:
    """(`_count`, `_sum`) of one histogram family summed over its children; None where the page has none.
    Only the family's own block is scanned after one `str.find` reaches it (C speed, as `_wanted_lines`)."""
    start = text.find("\n" + family + "_")
    if start < 0:
        return None, None
    end = text.find("\n# ", start)
    block = text[start : len(text) if end < 0 else end]
    totals: list[float | None] = []
    for name in (family + "_count", family + "_sum"):
        total, found, pos = 0.0, False, 0
        key = "\n" + name
        while (pos := block.find(key, pos)) >= 0:
            stop = block.find("\n", pos + 1)
            sample = _split_sample(block[pos + 1 : len(block) if stop < 0 else stop])
            if sample is not None and sample[0] == name:
                total, found = total + sample[2], True
            pos += 1
        totals.append(total if found else None)
    return totals[0], totals[1]


def parse_metrics(text: str, *, histograms: bool = True) -> ScrapedMetrics:
    """Parses the Prometheus text format, keeping only the series routing uses (and shedding's histograms
    when asked)."""
    acc = _Acc()
    out = ScrapedMetrics()
    lora_ts = float("-inf")
    for line in _wanted_lines(text):
        sample = _split_sample(line)
        if sample is None:
            continue
        name, labels, value = sample
        acc.seen.add(name)
        if name == "vllm:num_requests_running":
            acc.running += value
        elif name == "vllm:num_requests_waiting":
            acc.waiting += value
        elif name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
            acc.kv.append(value)
        elif name == "vllm:cache_config_info":
            lab = dict(_CACHE_LABELS.findall(labels))  # two of its ~40 labels
            out.num_gpu_blocks = _int_or_none(lab.get("num_gpu_blocks"))
            out.block_size = _int_or_none(lab.get("block_size"))
        elif name == "vllm:lora_requests_info" and value >= lora_ts:
            lora_ts = value
            lab = dict(_LABEL.findall(labels))
            names = lab.get("running_lora_adapters", "") + "," + lab.get("waiting_lora_adapters", "")
            out.lora_adapters = frozenset(n.strip() for n in names.split(",") if n.strip())
    if "vllm:num_requests_running" in acc.seen:
        out.num_running = int(acc.running)
    if "vllm:num_requests_waiting" in acc.seen:
        out.num_waiting = int(acc.waiting)
    if acc.kv:
        out.kv_usage = sum(acc.kv) / len(acc.kv)
    if histograms:
        prefill_time, prefill_tokens, itl = (_histogram_totals(text, family) for family in _HISTOGRAMS)
        out.prefill_requests, out.prefill_seconds = prefill_time
        out.prefill_tokens = prefill_tokens[1]
        out.itl_count, out.itl_seconds = itl
    return out


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def apply_metrics(state: EndpointState, metrics: ScrapedMetrics, now: float) -> None:
    """Copies one scrape into the state routing reads; keeps the last cache config if a page lacks it."""
    state.num_running = metrics.num_running
    state.num_waiting = metrics.num_waiting
    state.kv_usage = metrics.kv_usage
    if metrics.num_gpu_blocks is not None:
        state.num_gpu_blocks = metrics.num_gpu_blocks
    if metrics.block_size is not None:
        state.block_size = metrics.block_size
    state.lora_adapters = metrics.lora_adapters
    if metrics.prefill_requests is not None:  # not read on every scrape: keep the last (cumulative) values
        state.prefill_requests = metrics.prefill_requests
        state.prefill_seconds = metrics.prefill_seconds
        state.prefill_tokens = metrics.prefill_tokens
        state.itl_count = metrics.itl_count
        state.itl_seconds = metrics.itl_seconds
    state.scraped_at = now
    state.stale = False


def parse_models(body: bytes) -> dict[str, dict[str, Any]]:
    """`/v1/models` body -> {model id: model card}; raises ValueError on a body that is not a model list."""
    doc = msgspec.json.decode(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ValueError("not a model list")
    return {str(card["id"]): card for card in doc["data"] if isinstance(card, dict) and "id" in card}


class Scraper:
    """One background loop per endpoint; never blocks the event loop (aiohttp reads, a cheap parse)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: ScrapeConfig,
        on_models: Callable[[EndpointState, dict[str, dict[str, Any]]], None],
        on_health: Callable[[EndpointState, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_metrics: Callable[[EndpointState], None] | None = None,
    ) -> None:
        self._session = session
        self._on_metrics = on_metrics  # told after each page lands in the state (shedding learns from it)
        self._clock = clock
        self._config = config
        self._on_models = on_models
        self._on_health = on_health
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self.scrapes_total = 0
        self.failures_total = 0
        self.warn = RateLimitedLog(
            log, clock=clock
        )  # a line per endpoint every 10 s, with the count held back

    async def run(self, state: EndpointState, *, fetch_models: bool = True) -> None:
        """Scrapes until cancelled; marks data stale after `stale_after_s` and the endpoint unhealthy after
        `unhealthy_after_failures` consecutive failures, and healthy again after one success."""
        failures = 0
        count = 0
        while True:
            want_models = fetch_models and (not state.models or count % MODELS_EVERY == 0)
            ok = await self.scrape_once(state, models=want_models, histograms=count % HISTOGRAMS_EVERY == 0)
            count += 1
            failures = 0 if ok else failures + 1
            if ok or failures >= self._config.unhealthy_after_failures:
                # In between, keep what the proxy decided (it marks an endpoint it cannot reach unhealthy).
                self._set_health(state, ok)
            self.mark_stale(state, self._clock())
            await asyncio.sleep(self._config.interval_s)

    def mark_stale(self, state: EndpointState, now: float) -> None:
        state.stale = state.scraped_at is None or now - state.scraped_at > self._config.stale_after_s

    def _set_health(self, state: EndpointState, healthy: bool) -> None:
        if healthy != state.healthy:
            if healthy:
                log.info("endpoint %s is now healthy", state.id)
            else:
                log.warning("endpoint %s is now unhealthy", state.id)
            state.healthy = healthy
            if self._on_health is not None:
                self._on_health(state, healthy)

    async def scrape_once(self, state: EndpointState, *, models: bool, histograms: bool = True) -> bool:
        """One read of /metrics (and /v1/models when asked); False when the engine did not answer well."""
        self.scrapes_total += 1
        try:
            if models:
                async with self._session.get(state.url + "/v1/models", timeout=self._timeout) as resp:
                    if resp.status == 200:
                        self._on_models(state, parse_models(await resp.read()))
            async with self._session.get(state.url + "/metrics", timeout=self._timeout) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, ValueError, msgspec.DecodeError, KeyError) as err:
            self.failures_total += 1
            reason = str(err) or type(err).__name__  # a TimeoutError says nothing by itself
            self.warn.warning(f"scrape {state.id}", "scrape of %s failed: %s", state.id, reason)
            return False
        apply_metrics(state, parse_metrics(text, histograms=histograms), self._clock())
        if self._on_metrics is not None:
            self._on_metrics(state)
        return True
