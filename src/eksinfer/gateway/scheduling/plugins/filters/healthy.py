"""`healthy-filter`: drop endpoints marked unhealthy (failed probes, connection errors). If every candidate is
unhealthy the set is returned unchanged, so a flapping health check degrades to best effort instead of 503."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from eksinfer.gateway.scheduling.framework import EndpointState, RoutingRequest, SchedulingContext
from eksinfer.gateway.scheduling.registry import PluginDeps, PluginParams


class HealthyFilter:
    type_name: ClassVar[str] = "healthy-filter"
    kind: ClassVar[Literal["filter"]] = "filter"

    class Params(PluginParams):
        pass

    def __init__(self, params: Params, deps: PluginDeps) -> None:
        self.params = params

    def filter(
        self, ctx: SchedulingContext, request: RoutingRequest, endpoints: Sequence[EndpointState]
    ) -> list[EndpointState]:
        healthy = [ep for ep in endpoints if ep.healthy]
        return healthy or list(endpoints)
