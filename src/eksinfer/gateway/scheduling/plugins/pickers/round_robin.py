"""`round-robin-picker`: cycle through the candidates in endpoint-id order, ignoring scores.

The cursor is the last chosen endpoint id, not an index, so endpoints joining or leaving do not make it skip
or repeat others.
"""

from __future__ import annotations

from collections.abc import Sequence

from eksinfer.gateway.scheduling.framework import SchedulingContext, ScoredEndpoint
from eksinfer.gateway.scheduling.registry import PluginBase, PluginDeps, PluginParams, plugin


@plugin("round-robin-picker", "picker")
class RoundRobinPicker(PluginBase):
    def __init__(self, params: PluginParams, deps: PluginDeps) -> None:
        super().__init__(params, deps)
        self._last: str | None = None

    def pick(self, ctx: SchedulingContext, scored: Sequence[ScoredEndpoint]) -> ScoredEndpoint:
        ordered = sorted(scored, key=lambda s: s.endpoint.id)
        chosen = ordered[0]
        if self._last is not None:
            chosen = next((s for s in ordered if s.endpoint.id > self._last), ordered[0])
        self._last = chosen.endpoint.id
        return chosen

    def reason(self) -> str:
        return "round-robin"
