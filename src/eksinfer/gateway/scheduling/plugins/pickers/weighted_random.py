"""`weighted-random-picker`: pick with probability proportional to the total score.

Efraimidis-Spirakis A-Res sampling as llm-d's weighted-random picker: key_i = U_i^(1/w_i), the largest key
wins; all-zero totals fall back to uniform.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from eksinfer.gateway.scheduling.framework import SchedulingContext, ScoredEndpoint
from eksinfer.gateway.scheduling.registry import PluginDeps, PluginParams


class WeightedRandomPicker:
    type_name: ClassVar[str] = "weighted-random-picker"
    kind: ClassVar[Literal["picker"]] = "picker"

    class Params(PluginParams):
        pass

    def __init__(self, params: Params, deps: PluginDeps) -> None:
        self.rng = deps.rng

    def pick(self, ctx: SchedulingContext, scored: Sequence[ScoredEndpoint]) -> ScoredEndpoint:
        positive = [s for s in scored if s.total > 0]
        if not positive:
            return self.rng.choice(list(scored))
        return max(positive, key=lambda s: self.rng.random() ** (1.0 / s.total))
