"""`softmax-picker`: sample `p_i ~ exp((s_i - s_max) / ((s_max - s_min) x T))`.

Dynamo's selector samples a softmax over min-max-normalised costs with temperature T (selector/default.rs,
`softmax_sample_index`); here over scores (higher is better). T = 0 is argmax with random ties; all-equal
scores are uniform. A small T (0.1-0.3) spreads a burst of equal requests without ignoring the scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import Field

from eksinfer.gateway.scheduling.framework import SchedulingContext, ScoredEndpoint
from eksinfer.gateway.scheduling.registry import PluginBase, PluginDeps, PluginParams, plugin


@plugin("softmax-picker", "picker")
class SoftmaxPicker(PluginBase):
    class Params(PluginParams):
        temperature: float = Field(0.2, ge=0, description="0 = argmax; larger spreads choices")

    def __init__(self, params: Params, deps: PluginDeps) -> None:
        self.temperature = params.temperature
        self.rng = deps.rng

    def pick(self, ctx: SchedulingContext, scored: Sequence[ScoredEndpoint]) -> ScoredEndpoint:
        totals = [s.total for s in scored]
        hi, lo = max(totals), min(totals)
        if hi - lo <= 1e-12:
            return self.rng.choice(list(scored))
        if self.temperature == 0:
            return self.rng.choice([s for s in scored if s.total >= hi - 1e-9])
        weights = [math.exp((t - hi) / ((hi - lo) * self.temperature)) for t in totals]
        return self.rng.choices(list(scored), weights=weights, k=1)[0]
