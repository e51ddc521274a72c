"""`weighted-random-picker`: pick with probability proportional to the total score.

Efraimidis-Spirakis A-Res sampling as llm-d's weighted-random picker: key_i = U_i^(1/w_i), the largest key
wins; all-zero totals fall back to uniform.
"""

from __future__ import annotations

from collections.abc import Sequence

from eksinfer.gateway.scheduling.framework import SchedulingContext, ScoredEndpoint
from eksinfer.gateway.scheduling.registry import PluginBase, plugin


@plugin("weighted-random-picker", "picker")
class WeightedRandomPicker(PluginBase):
    def pick(self, ctx: SchedulingContext, scored: Sequence[ScoredEndpoint]) -> ScoredEndpoint:
        positive = [s for s in scored if s.total > 0]
        if not positive:
            return self.deps.rng.choice(list(scored))
        return max(positive, key=lambda s: self.deps.rng.random() ** (1.0 / s.total))
