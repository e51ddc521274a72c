"""Open-loop send times: a pure generator of absolute offsets (seconds from the start of a phase).

Poisson arrivals have exponential inter-arrival gaps with mean 1/rate (vLLM `--request-rate` with
burstiness 1, GuideLLM `poisson`, inference-perf `load.type: poisson`); `constant` spaces them 1/rate apart.
With burstiness b != 1 the gaps are gamma distributed with shape b and scale 1/(rate * b), as vLLM's
`--burstiness`: the mean stays 1/rate, the coefficient of variation is 1/sqrt(b) (b < 1 burstier).
Workers sleep until each absolute time, so a late send never shifts the ones after it (open loop).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Literal


def send_times(
    rate: float, arrival: Literal["poisson", "constant"], seed: int, burstiness: float = 1.0
) -> Iterator[float]:
    """Endless absolute send times at `rate` req/s, the first at 0."""
    if rate <= 0 or burstiness <= 0:
        raise ValueError("rate and burstiness must be positive")
    if arrival == "constant":
        return (i / rate for i in itertools.count())
    return _poisson(rate, burstiness, random.Random(seed))


def _poisson(rate: float, burstiness: float, rng: random.Random) -> Iterator[float]:
    t = 0.0
    while True:
        yield t
        if burstiness == 1.0:
            t += rng.expovariate(rate)
        else:
            t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
