"""Open-loop send times: a pure generator of absolute offsets (seconds from the start of a phase).

Poisson arrivals have exponential inter-arrival gaps with mean 1/rate (vLLM `--request-rate` with
burstiness 1, GuideLLM `poisson`, inference-perf `load.type: poisson`); `constant` spaces them 1/rate apart.
Workers sleep until each absolute time, so a late send never shifts the ones after it (open loop).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Literal


def send_times(rate: float, arrival: Literal["poisson", "constant"], seed: int) -> Iterator[float]:
    """Endless absolute send times at `rate` req/s, the first at 0."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    if arrival == "constant":
        return (i / rate for i in itertools.count())
    return _poisson(rate, random.Random(seed))


def _poisson(rate: float, rng: random.Random) -> Iterator[float]:
    t = 0.0
    while True:
        yield t
        t += rng.expovariate(rate)
