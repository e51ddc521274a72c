"""`max-score-picker`: the highest total wins; ties (within 1e-9) are broken uniformly at random so equal
endpoints share load instead of the first one taking everything (llm-d max-score-picker)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from eksinfer.gateway.scheduling.framework import SchedulingContext, ScoredEndpoint
from eksinfer.gateway.scheduling.registry import PluginDeps, PluginParams

TIE_EPSILON = 1e-9


class MaxScorePicker:
    type_name: ClassVar[str] = "max-score-picker"
    kind: ClassVar[Literal["picker"]] = "picker"

    class Params(PluginParams):
        pass

    def __init__(self, params: Params, deps: PluginDeps) -> None:
        self.rng = deps.rng

    def pick(self, ctx: SchedulingContext, scored: Sequence[ScoredEndpoint]) -> ScoredEndpoint:
        best = max(s.total for s in scored)
        tied = [s for s in scored if s.total >= best - TIE_EPSILON]
        return tied[0] if len(tied) == 1 else self.rng.choice(tied)
