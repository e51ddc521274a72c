"""`random-picker`: uniform over the candidates, ignoring scores (a baseline)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from eksinfer.gateway.scheduling.framework import SchedulingContext, ScoredEndpoint
from eksinfer.gateway.scheduling.registry import PluginDeps, PluginParams


class RandomPicker:
    type_name: ClassVar[str] = "random-picker"
    kind: ClassVar[Literal["picker"]] = "picker"

    class Params(PluginParams):
        pass

    def __init__(self, params: Params, deps: PluginDeps) -> None:
        self.rng = deps.rng

    def pick(self, ctx: SchedulingContext, scored: Sequence[ScoredEndpoint]) -> ScoredEndpoint:
        return self.rng.choice(list(scored))
