"""An engine's prefill time as a function of the prompt tokens it computes, learned from its own /metrics.

vLLM (0.32) observes, for every finished request, the histograms `vllm:request_prefill_time_seconds` (time in
the PREFILL phase: from first scheduled to first token) and `vllm:request_prefill_kv_computed_tokens` (new
KV tokens computed in prefill, cached ones excluded), and for every streamed token
`vllm:inter_token_latency_seconds`. Between two scrapes the `_count` and `_sum` deltas give, for the n
requests that finished meanwhile, their total uncached tokens T and total prefill seconds S, and the mean
step time (inter-token latency). Per request,

    prefill_s(u) = a + b x u        (u: uncached prompt tokens)

- `a`, the fixed part, is the engine's mean step time (a decayed mean of its inter-token latency, capped at
  the mean prefill time): a prompt that fits one step's token budget still waits for that step;
- `b` (seconds per token; 1/b is the rate) by least squares over the scrape intervals, S_i - a x n_i =
  b x T_i, kept >= 0. Older intervals weigh `DECAY` (0.95) less per interval that had finished requests, a
  memory of about 20 such intervals: 4 s of steady load at the default 200 ms scrape.
A ratio alone (b = S / T, a = 0) would price a long prompt at the rate of short ones, whose time is mostly
the step: an engine seen with 100-token prompts at 40 ms each would be predicted 40 s for 100k tokens. A
free two-parameter fit cannot tell a from b when every interval had the same prompt mix (a benchmark, a
pool of one client), and then either over-prices long prompts (shed, never seen, never learned) or
over-prices short ones; the step time is measured independently, so both stay identified. Until the engine
has streamed tokens, a = 0.

Why these metrics and not the gateway's own TTFTs: a TTFT measured by the gateway also holds the queue wait,
which is exactly what shedding adds on top, and would have to be subtracted with a guess; the engine times
its prefill phase itself and counts its own cache hits. What it cannot see: its prefill time is per request,
so two prompts prefilled side by side each count their whole time (the rate reads slower than the engine's
throughput when prefills overlap: the safe side for shedding, which then sheds a little early).

Also kept: the mean uncached tokens per finished request (decayed T / n), the size assumed for each request
the engine reports waiting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DECAY = 0.95


@dataclass(slots=True)
class PrefillFit:
    """Per endpoint: the last cumulative counts and the decayed sums. `a_s`, `b_s_per_token` and
    `mean_tokens` are solved when a scrape lands, so a prediction only reads them."""

    last: tuple[float, float, float] | None = None  # (requests, tokens, seconds) at the previous scrape
    last_step: tuple[float, float] | None = None  # (tokens streamed, seconds between them)
    n_sum: float = 0.0  # decayed sums over intervals: requests, tokens, seconds
    t_sum: float = 0.0
    s_sum: float = 0.0
    nt: float = 0.0  # decayed sums of products: n x T, T x T, T x S
    tt: float = 0.0
    ts: float = 0.0
    step_n: float = 0.0  # decayed inter-token latency count and sum
    step_s: float = 0.0
    a_s: float = 0.0
    b_s_per_token: float = 0.0
    mean_tokens: float = 0.0
    known: bool = False

    def observe(
        self, requests: float, tokens: float, seconds: float, steps: float | None, step_s: float | None
    ) -> None:
        """One scrape: cumulative `_count` (requests) and `_sum`s (tokens, seconds) of the two prefill
        histograms, and `_count`, `_sum` of the inter-token latency (None when the page lacks it)."""
        if steps is not None and step_s is not None:
            self._observe_steps(steps, step_s)
        last, self.last = self.last, (requests, tokens, seconds)
        if last is None:
            return
        n, t, s = requests - last[0], tokens - last[1], seconds - last[2]
        # Nothing finished, counters gone back (the engine restarted), or a value that is not a number (a
        # page's NaN or +Inf would stay in the sums for good): no interval.
        if not (0 < n < math.inf and 0 <= t < math.inf and 0 <= s < math.inf):
            return
        d = DECAY
        self.n_sum, self.t_sum, self.s_sum = d * self.n_sum + n, d * self.t_sum + t, d * self.s_sum + s
        self.nt, self.tt, self.ts = d * self.nt + n * t, d * self.tt + t * t, d * self.ts + t * s
        self.known = True
        self._solve()

    def _observe_steps(self, steps: float, step_s: float) -> None:
        last, self.last_step = self.last_step, (steps, step_s)
        if last is None:
            return
        n, s = steps - last[0], step_s - last[1]
        if 0 < n < math.inf and 0 <= s < math.inf:
            self.step_n, self.step_s = DECAY * self.step_n + n, DECAY * self.step_s + s
            if self.known:
                self._solve()

    def _solve(self) -> None:
        self.mean_tokens = self.t_sum / self.n_sum
        step = self.step_s / self.step_n if self.step_n > 0 else 0.0
        self.a_s = min(step, self.s_sum / self.n_sum)
        self.b_s_per_token = max(0.0, (self.ts - self.a_s * self.nt) / self.tt) if self.tt > 0 else 0.0

    def prefill_s(self, uncached_tokens: int) -> float:
        """Predicted prefill time of a prompt with `uncached_tokens` to compute; 0 before any evidence."""
        return self.a_s + self.b_s_per_token * uncached_tokens if self.known else 0.0
