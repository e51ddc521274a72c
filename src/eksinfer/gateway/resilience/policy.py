"""Retry timing and the gateway-wide retry budget.

Backoff: the wait before attempt n (n = 1 for the first retry) is `min(base * 2^(n-1), cap)` scaled by a
random factor in [1 - jitter, 1 + jitter] (Bifrost: 500 ms x 2^n, 0.8-1.2), so that requests failing together
do not retry together. The random generator is injected, so tests see exact waits.

Budget (Envoy's `retry_budget`): a retry may start only while the retries in flight stay below
`max(min_retries, percent% of the requests in flight)`. When a pool fails outright every request wants to
retry at once; the budget lets a few do so (enough to ride out one bad endpoint) and sends the rest on to
the next tier of the cascade instead of multiplying the load on a pool that is already down. A retry away
from an endpoint that its failure just ejected takes no slot (the proxy decides): it moves that endpoint's
share of the load to the others rather than multiplying it, and a stalled engine's waiting requests all
retry at once.
"""

from __future__ import annotations

import random

from eksinfer.gateway.resilience.config import BudgetConfig, RetryConfig


class Backoff:
    """Waits between attempts; `delay_s(n)` for the n-th retry (n >= 1)."""

    __slots__ = ("_base", "_cap", "_jitter", "_rng")

    def __init__(self, config: RetryConfig, rng: random.Random | None = None) -> None:
        self._base = config.backoff_base_s
        self._cap = config.backoff_max_s
        self._jitter = config.jitter
        self._rng = rng or random.Random()

    def delay_s(self, retry: int) -> float:
        raw: float = min(self._base * 2.0 ** max(0, retry - 1), self._cap)
        if not self._jitter:
            return raw
        return raw * (1.0 + self._jitter * (2.0 * self._rng.random() - 1.0))


class RetryBudget:
    """Counts requests and retries in flight; `try_acquire` says whether one more retry may start."""

    __slots__ = ("_min", "_share", "active_requests", "active_retries", "denied_total")

    def __init__(self, config: BudgetConfig) -> None:
        self._share = config.percent / 100.0
        self._min = config.min_retries
        self.active_requests = 0
        self.active_retries = 0
        self.denied_total = 0

    def limit(self) -> int:
        return max(self._min, int(self.active_requests * self._share))

    def try_acquire(self) -> bool:
        """Takes a retry slot (give it back with `release`); False, and counted, when the budget is spent."""
        if self.active_retries >= self.limit():
            self.denied_total += 1
            return False
        self.active_retries += 1
        return True

    def release(self) -> None:
        self.active_retries = max(0, self.active_retries - 1)
