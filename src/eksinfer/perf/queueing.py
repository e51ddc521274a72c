"""Open-loop serving: one engine under Poisson arrivals, past the knee and up to saturation.

`predict_aggregated` answers a closed loop (a fixed number of requests in flight). A planner's target is an
arrival rate, and near capacity the queue, not the engine, sets TTFT. This module turns the closed-loop
curve into an open-loop one with the flow-equivalent-server method (Chandy, Herzog and Woo, 1975; the
"Norton's theorem" of queueing networks): the engine with k requests in the system completes them at
    mu(k) = closed-loop requests/s at concurrency min(k, B)      (B = sequences the KV cache and
                                                                   max_num_seqs allow; beyond B they wait)
and the number in the system is a birth-death chain with arrival rate lambda:
    p(n) = p(0) x prod_{k<=n} lambda / mu(k);  for n > B the ratio r = lambda / mu(B) is constant, so the
    tail is geometric and sums in closed form (needs r < 1: lambda >= mu(B) saturates the engine).
Then E2E = E[N] / lambda (Little), TPOT = step time at the mean running batch, TTFT = E2E - (OSL - 1) x TPOT.
mu(k) is evaluated on a log-spaced grid of k and interpolated linearly between grid points.
The knee is the arrival rate at which the mean request latency (E2E) reaches KNEE_FACTOR x its light-load
value: past it, each extra request/s costs latency faster than it adds throughput.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from eksinfer.perf.engine import EnginePerf
from eksinfer.perf.serving import max_running, predict_aggregated, predict_decode

KNEE_FACTOR = 2.0
GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclass(frozen=True, slots=True)
class OpenLoopPoint:
    """Steady state of one engine at an arrival rate (Poisson), or saturated."""

    requests_per_s: float
    saturated: bool  # arrivals at or above the engine's capacity: the queue grows without bound
    mean_in_system: float
    mean_running: float
    ttft_s: float
    tpot_s: float
    e2e_s: float

    @property
    def queue_wait_s(self) -> float:
        """Mean time waiting for a batch slot (Little's law on the requests not running)."""
        if self.saturated:
            return math.inf
        if self.requests_per_s <= 0:
            return 0.0
        return max(0.0, self.mean_in_system - self.mean_running) / self.requests_per_s


@dataclass(frozen=True, slots=True)
class ServiceCurve:
    """mu(k) and TPOT(k) of one engine and request shape for k = 1..batch_limit (index k - 1)."""

    batch_limit: int
    rates: tuple[float, ...]
    tpots: tuple[float, ...]
    output_tokens: int

    @property
    def capacity_requests_per_s(self) -> float:
        return max(self.rates)

    def tpot(self, k: float) -> float:
        """TPOT at a mean running batch of k (linear between whole batches)."""
        k = max(1.0, min(k, float(self.batch_limit)))
        i = int(k)
        if i >= self.batch_limit:
            return self.tpots[-1]
        return self.tpots[i - 1] + (k - i) * (self.tpots[i] - self.tpots[i - 1])


def _dense(ks: list[int], ys: list[float], limit: int) -> tuple[float, ...]:
    """Values at k = 1..limit, linear between the evaluated grid points."""
    out, j = [], 0
    for k in range(1, limit + 1):
        while j + 1 < len(ks) and ks[j + 1] < k:
            j += 1
        if k <= ks[0]:
            out.append(ys[0])
        elif j + 1 < len(ks):
            t = (k - ks[j]) / (ks[j + 1] - ks[j])
            out.append(ys[j] + t * (ys[j + 1] - ys[j]))
        else:
            out.append(ys[-1])
    return tuple(out)


def service_curve(
    perf: EnginePerf,
    *,
    input_tokens: int,
    output_tokens: int,
    prefix_hit: float = 0.0,
    max_batch: int | None = None,
    decode_only: bool = False,
) -> ServiceCurve:
    """Closed-loop throughput and TPOT at each concurrency up to what the KV cache (and `max_batch`,
    the engine's --max-num-seqs) lets run at once; `decode_only` for a P/D decode engine."""
    limit = max(1, max_running(perf, input_tokens, output_tokens))
    if max_batch is not None:
        limit = max(1, min(limit, max_batch))
    ks = [k for k in GRID if k < limit] + [limit]
    points = [
        predict_decode(perf, input_tokens=input_tokens, output_tokens=output_tokens, concurrency=k)
        if decode_only
        else predict_aggregated(
            perf,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            concurrency=k,
            prefix_hit=prefix_hit,
        )
        for k in ks
    ]
    return ServiceCurve(
        batch_limit=limit,
        rates=_dense(ks, [p.requests_per_s for p in points], limit),
        tpots=_dense(ks, [p.tpot_s for p in points], limit),
        output_tokens=output_tokens,
    )


def open_loop(curve: ServiceCurve, requests_per_s: float) -> OpenLoopPoint:
    """Mean number in system, latency and TPOT at Poisson arrival rate `requests_per_s`."""
    lam = requests_per_s
    b = curve.batch_limit
    r_tail = lam / curve.rates[-1]
    if lam <= 0:
        return OpenLoopPoint(0.0, False, 0.0, 0.0, 0.0, curve.tpot(1), 0.0)
    if r_tail >= 1.0:
        inf = math.inf
        return OpenLoopPoint(lam, True, inf, float(b), inf, curve.tpot(b), inf)
    # log p(n) - log p(0) for n = 0..B; normalise with the geometric tail beyond B
    logs = [0.0]
    for mu in curve.rates:
        logs.append(logs[-1] + math.log(lam / mu))
    top = max(logs)
    weights = [math.exp(x - top) for x in logs]
    tail_mass = weights[b] * r_tail / (1.0 - r_tail)  # sum_{n>B} w(B) r^(n-B)
    # sum_{n>B} n w(B) r^(n-B) = w(B) (B r / (1 - r) + r / (1 - r)^2)
    tail_n = weights[b] * (b * r_tail / (1.0 - r_tail) + r_tail / (1.0 - r_tail) ** 2)
    total = sum(weights) + tail_mass
    mean_n = (sum(n * w for n, w in enumerate(weights)) + tail_n) / total
    mean_running = (sum(n * w for n, w in enumerate(weights)) + b * tail_mass) / total
    tpot = curve.tpot(mean_running)
    e2e = mean_n / lam
    decode = max(0, curve.output_tokens - 1) * tpot
    return OpenLoopPoint(lam, False, mean_n, mean_running, max(0.0, e2e - decode), tpot, max(e2e, decode))


def max_rate(curve: ServiceCurve, ok: Callable[[OpenLoopPoint], bool], *, iterations: int = 24) -> float:
    """The highest arrival rate whose open-loop point is `ok` (latency grows with load; bisection), 0 if
    even a trickle is not."""
    cap = curve.rates[-1]
    lo, hi = cap * 1e-4, cap * (1 - 1e-9)
    if not ok(open_loop(curve, lo)):
        return 0.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if ok(open_loop(curve, mid)):
            lo = mid
        else:
            hi = mid
    return lo


def erlang_c_wait_s(servers: int, service_rate: float, arrival_rate: float) -> float:
    """Mean wait before service in an M/M/c queue (Erlang C): `servers` engines each completing
    `service_rate` requests/s; infinite at or past saturation."""
    c, a = servers, arrival_rate / service_rate
    if arrival_rate <= 0:
        return 0.0
    if a >= c:
        return math.inf
    term, total = 1.0, 1.0  # a^k / k! summed for k < c, in a numerically safe recurrence
    for k in range(1, c):
        term *= a / k
        total += term
    top = term * a / c / (1 - a / c)  # a^c / c! / (1 - rho)
    return top / (total + top) / (c * service_rate - arrival_rate)


def knee_requests_per_s(curve: ServiceCurve, factor: float = KNEE_FACTOR) -> float:
    """The arrival rate at which the mean request latency reaches `factor` x its light-load value."""
    light = open_loop(curve, curve.rates[-1] * 1e-4).e2e_s
    return max_rate(curve, lambda p: p.e2e_s <= factor * light)
