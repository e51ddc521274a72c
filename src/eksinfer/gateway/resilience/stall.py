"""Stalled engines, found in a second or two instead of a first-token timeout.

A stalled engine (accepts connections, never answers: a hung engine core, a wedged GPU) is told apart from a
busy one by progress: a busy engine keeps streaming tokens to the requests it runs while new ones queue, a
stalled one sends no byte at all. So an endpoint is stalled when it holds a request still waiting for its
first byte for longer than `stall_after_s` (3 s) and no byte of any of its requests arrived during that time
(a non-streamed answer counts when it arrives).
Half way there it is a suspect: while other endpoints can take them, new requests go elsewhere (so a
stalled engine that looks idle to its scrapes does not draw a pool's whole traffic for `stall_after_s`).
A second sign makes a suspect without silence: the engine's own count. An engine counts every request it
admitted as running or waiting (vLLM's `num_requests_running` / `num_requests_waiting`); when a scrape
taken after our oldest waits began counts fewer requests than the gateway has had in flight there since
before that scrape, the engine has lost or not yet admitted some of them (a hung engine core behind a live
HTTP front end keeps streaming what it runs while new requests pile up unseen: the bench's stalled engine
drew 14 to 18 requests in the 4 s its running streams took to end). Other gateways' requests only raise the
engine's count. An engine front end starved of CPU shows the same sign for a while, so it only steers new
requests away; the verdict below still needs silence.
The watchdog (a background loop every `stall_after_s / 4`) then ejects it (outlier detection, with its usual
cap on the share of a pool) and ends the wait of each request waiting for a first byte there, which the proxy
retries elsewhere as a first-token timeout. Requests already streaming from it keep their own idle timeout.

A queue that holds a request for 3 s while the engine streams nothing to anyone is not a load a working
engine shows when it streams: a running batch emits a token every step (tens of milliseconds). Two loads would
look like it, so neither is judged by its wait:
- a long prefill (a 100k-token prompt alone on an engine, or a P/D decode request's KV pull): each attempt
  gets a grace of its prompt tokens over `PREFILL_FLOOR_TOKENS_PER_S`, a prefill rate any GPU engine beats
  (a P/D request's prefill hop, which the gateway runs before it sends the decode endpoint anything, is not
  watched at all: the proxy adds the attempt when its request goes out; `prefill_timeout_s` bounds the hop);
- a non-streamed answer sends no byte until it ends: its wait never convicts an endpoint (its arrival still
  counts as progress, and it is retried with the others when a streamed request proves the endpoint stalled;
  otherwise `first_token_timeout_s` bounds it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# endpoint id -> (requests its engine counts, running + waiting; seconds since that scrape), None if unknown
EngineCount = Callable[[str], tuple[int, float] | None]

# Prompt tokens per second an engine is assumed to prefill at least (a 70B model on one H100 does ~10x this);
# 100k tokens of prompt give 20 s of grace before the wait counts.
PREFILL_FLOOR_TOKENS_PER_S = 5_000.0


def grace_s(prompt_tokens: int, streamed: bool) -> float:
    """How long an attempt may wait for its first byte before its wait is evidence of a stall."""
    return prompt_tokens / PREFILL_FLOOR_TOKENS_PER_S if streamed else float("inf")


@dataclass(slots=True, eq=False)
class Watched:
    """One attempt in flight, as the watchdog sees it; times from the event loop's clock."""

    endpoint_id: str
    started: float
    last_byte: float | None = None  # None until the first byte
    grace_s: float = 0.0  # added to `stall_after_s` for this attempt's own wait (`grace_s()`)
    deadline: asyncio.Timeout | None = field(default=None, repr=False)
    expired: bool = False  # the watchdog ended the wait (so the timeout's message can say why)

    def expire(self, now: float) -> None:
        """Ends the wait for the first byte now (the proxy sees a first-token timeout)."""
        if self.deadline is not None and self.last_byte is None:
            self.expired = True
            self.deadline.reschedule(now)


class StallWatch:
    """Attempts in flight per endpoint; `stalled(now)` names the endpoints that show no progress."""

    def __init__(self, stall_after_s: float) -> None:
        self.stall_after_s = stall_after_s
        self._flights: dict[str, set[Watched]] = {}
        self.stalls_total = 0
        self.suspects: frozenset[str] = frozenset()  # silent for half the time: no new requests if avoidable

    def add(self, watched: Watched) -> None:
        self._flights.setdefault(watched.endpoint_id, set()).add(watched)

    def remove(self, watched: Watched) -> None:
        flights = self._flights.get(watched.endpoint_id)
        if flights is not None:
            flights.discard(watched)
            if not flights:
                del self._flights[watched.endpoint_id]

    def first_byte_waits(self, endpoint_id: str) -> int:
        """Attempts on `endpoint_id` still waiting for their first byte (the queue estimate's own count)."""
        flights = self._flights.get(endpoint_id)
        return sum(w.last_byte is None for w in flights) if flights else 0

    def stalled(
        self, now: float, after_s: float | None = None, engine_count: EngineCount | None = None
    ) -> list[tuple[str, list[Watched]]]:
        """Endpoints with a request waiting for its first byte longer than `after_s` (`stall_after_s`) and
        either no byte from any request in that time, or a scrape younger than `after_s` that counts fewer
        requests than the gateway sent there before it (`engine_count(id)` -> (running + waiting, scrape age
        in seconds), None without a scrape); with their waiting requests."""
        found = []
        after_s = self.stall_after_s if after_s is None else after_s
        limit = now - after_s
        for endpoint_id, flights in self._flights.items():
            waiting = [w for w in flights if w.last_byte is None]
            if not any(w.started + w.grace_s <= limit for w in waiting):
                continue
            if any(w.last_byte is not None and w.last_byte > limit for w in flights):
                # It streams to someone: busy, unless its engine does not even count our requests.
                counted = engine_count(endpoint_id) if engine_count is not None else None
                if counted is None or counted[1] >= after_s:
                    continue
                if sum(w.started <= limit for w in flights) <= counted[0]:
                    continue
            found.append((endpoint_id, waiting))
        return found

    async def run(
        self,
        on_stall: Callable[[str, Iterable[Watched]], None],
        engine_count: EngineCount | None = None,
    ) -> None:
        """Checks every quarter of `stall_after_s` until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.stall_after_s / 4)
            now = loop.time()
            suspects = self.stalled(now, self.stall_after_s / 2, engine_count)
            self.suspects = frozenset(e for e, _ in suspects)
            for endpoint_id, waiting in self.stalled(now):
                self.stalls_total += 1
                log.warning(
                    "endpoint %s stalled: %d request(s) waiting for a first byte, no byte sent for %.1f s",
                    endpoint_id,
                    len(waiting),
                    self.stall_after_s,
                )
                on_stall(endpoint_id, waiting)
