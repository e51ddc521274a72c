"""`max-score-picker`: the highest total wins; ties (within 1e-9) are broken uniformly at random so equal
endpoints share load instead of the first one taking everything (llm-d max-score-picker)."""

from __future__ import annotations

from collections.abc import Sequence

from eksinfer.gateway.scheduling.framework import SchedulingContext, ScoredEndpoint
from eksinfer.gateway.scheduling.registry import PluginBase, plugin

TIE_EPSILON = 1e-9


@plugin("max-score-picker", "picker")
class MaxScorePicker(PluginBase):
    def pick(self, ctx: SchedulingContext, scored: Sequence[ScoredEndpoint]) -> ScoredEndpoint:
        best = max(s.total for s in scored)
        tied = [s for s in scored if s.total >= best - TIE_EPSILON]
        return tied[0] if len(tied) == 1 else self.deps.rng.choice(tied)
