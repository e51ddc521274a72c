"""KV-cache hit rate, measured two ways:

server side   Δ vllm:prefix_cache_hits_total / Δ vllm:prefix_cache_queries_total, read from each target's
              /metrics just before and just after the measured phase, summed over engines and URLs (both
              counters are in tokens, so the ratio is the token hit rate vLLM's own dashboards plot)
client side   Σ usage.prompt_tokens_details.cached_tokens / Σ prompt_tokens over requests that report it
              (inference-perf's kv_cache_hit_percent / 100; vLLM sends it only with
              --enable-prompt-tokens-details)
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Sequence

import aiohttp

log = logging.getLogger(__name__)

HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"


def parse_counters(text: str, names: Iterable[str] = (HITS, QUERIES)) -> dict[str, float]:
    """Sum of every sample (all label sets) of each named metric in Prometheus text format, read with
    prometheus_client's parser (a sample's optional timestamp is not its value); ValueError for text that is
    not the exposition format."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = set(names)
    out = dict.fromkeys(wanted, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                out[sample.name] += float(sample.value)
    return out


async def scrape(session: aiohttp.ClientSession, urls: Sequence[str]) -> dict[str, dict[str, float] | None]:
    """Counters from each URL; None for a URL that could not be read (logged, never fatal)."""

    async def one(url: str) -> dict[str, float] | None:
        try:
            async with asyncio.timeout(10), session.get(url) as resp:
                if resp.status != 200:
                    log.warning("metrics %s: HTTP %s", url, resp.status)
                    return None
                return parse_counters(await resp.text())
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            log.warning("metrics %s: %s", url, err)
            return None

    results = await asyncio.gather(*(one(u) for u in urls))
    return dict(zip(urls, results, strict=True))


def metrics_hit_rate(
    before: dict[str, dict[str, float] | None], after: dict[str, dict[str, float] | None]
) -> dict[str, object]:
    """Token hit rate over the run, total and per URL; NaN where nothing was queried or a scrape failed."""
    per_url: dict[str, float] = {}
    hits = queries = 0.0
    for url, b in before.items():
        a = after.get(url)
        if b is None or a is None:
            per_url[url] = math.nan
            continue
        dh, dq = a[HITS] - b[HITS], a[QUERIES] - b[QUERIES]
        per_url[url] = dh / dq if dq > 0 else math.nan
        hits, queries = hits + dh, queries + dq
    return {
        "hit_rate": hits / queries if queries > 0 else math.nan,
        "hit_tokens": hits,
        "query_tokens": queries,
        "per_url": per_url,
    }


def engine_bases(metrics_urls: Sequence[str], targets: Sequence[str]) -> list[str]:
    """The engines' base URLs: each metrics URL without its /metrics path, else the targets."""
    if metrics_urls:
        return [u[: -len("/metrics")] if u.endswith("/metrics") else u.rstrip("/") for u in metrics_urls]
    return [t[:-3] if t.endswith("/v1") else t for t in (u.rstrip("/") for u in targets)]


async def reset_prefix_cache(session: aiohttp.ClientSession, bases: Sequence[str]) -> None:
    """vLLM's POST /reset_prefix_cache on every engine, so a run starts cold."""
    from eksinfer.errors import UpstreamError

    for base in bases:
        url = base + "/reset_prefix_cache"
        try:
            async with asyncio.timeout(10), session.post(url) as resp:
                if resp.status >= 300:
                    raise UpstreamError(f"{url} answered HTTP {resp.status}; cannot reset the prefix cache")
        except (aiohttp.ClientError, TimeoutError) as err:
            raise UpstreamError(
                f"cannot reset the prefix cache at {url}: {err or type(err).__name__}"
            ) from None
