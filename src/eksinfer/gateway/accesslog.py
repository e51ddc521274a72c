"""One JSON line per request, written through `logging` to the `eksinfer.access` logger so operators route it
like any other log (a handler of their own, a level, a filter) without parsing the gateway's other output.

A line carries what happened to the request, never what it said: route, model, pool, endpoint, HTTP status,
TTFT (and where it went: `ttft_parts_s`) and end-to-end seconds, prompt / predicted-cached / generated
tokens, routing preset and reason, attempts and the request id. No prompt, no completion text, no API key:
the record has no field that could hold them.

Cost on the hot path: about 12 us a line (`make bench ARGS=observe`), most of it `logging.LogRecord`; when
the logger is disabled for INFO the record is not even encoded.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

import msgspec

ACCESS_LOGGER = "eksinfer.access"


@dataclass(slots=True)
class RequestRecord:
    """What the gateway learns about one request while serving it; filled by the proxy's hooks, read once at
    the end by the access log, the status board and the tracer."""

    request_id: str
    route: str
    started: float  # perf_counter at arrival
    wall_started: float  # time.time() at arrival, for the log's timestamp
    model: str = ""
    pool: str = ""
    endpoint: str = ""
    preset: str = ""
    reason: str = ""
    status: int = 0
    ttft_s: float | None = None
    e2e_s: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0  # the router's prediction of prompt tokens cached on the chosen endpoint
    generated_tokens: int = 0
    attempts: int = 0
    # Where the time to first token went (`ttft_parts`): the answering attempt's wait for its first byte,
    # attempts that failed before it (by failure kind) and retry backoff; the rest is the gateway's own.
    attempt_started: float | None = None  # perf_counter when the current attempt was sent
    upstream_s: float | None = None
    spent_s: dict[str, float] | None = None

    def spend(self, part: str, seconds: float) -> None:
        spent = self.spent_s
        if spent is None:
            spent = self.spent_s = {}
        spent[part] = spent.get(part, 0.0) + seconds

    def ttft_parts(self) -> dict[str, float] | None:
        """TTFT split: `upstream` (the answering endpoint's queue and prefill, or a managed API's first
        token), one entry per kind of failed attempt (`first_token_timeout` is the stall watchdog's or the
        first-token deadline's wait), `backoff`, and `gateway` (admission, routing: the rest)."""
        if self.ttft_s is None:
            return None
        parts = dict(self.spent_s or {})
        parts["upstream"] = self.upstream_s or 0.0
        parts["gateway"] = max(0.0, self.ttft_s - sum(parts.values()))
        return {k: round(v, 6) for k, v in parts.items()}

    def as_dict(self) -> dict[str, Any]:
        """The log line's fields, in a stable order."""
        return {
            "ts": round(self.wall_started, 6),
            "request_id": self.request_id,
            "route": self.route,
            "model": self.model,
            "pool": self.pool,
            "endpoint": self.endpoint,
            "status": self.status,
            "ttft_s": None if self.ttft_s is None else round(self.ttft_s, 6),
            "e2e_s": None if self.e2e_s is None else round(self.e2e_s, 6),
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "generated_tokens": self.generated_tokens,
            "preset": self.preset,
            "reason": self.reason,
            "attempts": self.attempts,
            "ttft_parts_s": self.ttft_parts(),
        }


class AccessLog:
    """Writes finished records at INFO on `eksinfer.access`."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(ACCESS_LOGGER)

    def write(self, record: RequestRecord) -> None:
        log = self._log
        if log.isEnabledFor(logging.INFO):
            # makeRecord + handle instead of log.info: no caller lookup (a stack walk) and no %-formatting,
            # which were most of the line's cost (benchmarks/bench_observe.py).
            line = msgspec.json.encode(record.as_dict()).decode()
            log.handle(log.makeRecord(log.name, logging.INFO, "", 0, line, (), None))


def default_handler(logger: logging.Logger | None = None) -> None:
    """Gives `eksinfer.access` a plain stdout handler (the JSON line alone, no level or logger prefix) unless
    the operator configured one; it stops propagating, so the lines do not repeat in the root log."""
    logger = logger or logging.getLogger(ACCESS_LOGGER)
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
