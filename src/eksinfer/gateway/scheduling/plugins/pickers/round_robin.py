"""`round-robin-picker`: cycle through the candidates in endpoint-id order, ignoring scores.

The cursor is the last chosen endpoint id, not an index, so endpoints joining or leaving do not make it skip
or repeat others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from eksinfer.gateway.scheduling.framework import SchedulingContext, ScoredEndpoint
from eksinfer.gateway.scheduling.registry import PluginDeps, PluginParams


class RoundRobinPicker:
    type_name: ClassVar[str] = "round-robin-picker"
    kind: ClassVar[Literal["picker"]] = "picker"

    class Params(PluginParams):
        pass

    def __init__(self, params: Params, deps: PluginDeps) -> None:
        self._last: str | None = None

    def pick(self, ctx: SchedulingContext, scored: Sequence[ScoredEndpoint]) -> ScoredEndpoint:
        ordered = sorted(scored, key=lambda s: s.endpoint.id)
        chosen = ordered[0]
        if self._last is not None:
            chosen = next((s for s in ordered if s.endpoint.id > self._last), ordered[0])
        self._last = chosen.endpoint.id
        return chosen
