"""`random-picker`: uniform over the candidates, ignoring scores (a baseline)."""

from __future__ import annotations

from collections.abc import Sequence

from eksinfer.gateway.scheduling.framework import SchedulingContext, ScoredEndpoint
from eksinfer.gateway.scheduling.registry import PluginBase, plugin


@plugin("random-picker", "picker")
class RandomPicker(PluginBase):
    def pick(self, ctx: SchedulingContext, scored: Sequence[ScoredEndpoint]) -> ScoredEndpoint:
        return self.deps.rng.choice(list(scored))

    def reason(self) -> str:
        return "random"
