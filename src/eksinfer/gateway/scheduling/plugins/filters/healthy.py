"""`healthy-filter`: drop endpoints marked unhealthy (failed probes, connection errors). If every candidate is
unhealthy the set is returned unchanged, so a flapping health check degrades to best effort instead of 503."""

from __future__ import annotations

from collections.abc import Sequence

from eksinfer.gateway.scheduling.data import ENDPOINT_METRICS
from eksinfer.gateway.scheduling.framework import EndpointState, RoutingRequest, SchedulingContext
from eksinfer.gateway.scheduling.registry import PluginBase, plugin


@plugin("healthy-filter", "filter", consumes={ENDPOINT_METRICS})
class HealthyFilter(PluginBase):
    def filter(
        self, ctx: SchedulingContext, request: RoutingRequest, endpoints: Sequence[EndpointState]
    ) -> list[EndpointState]:
        healthy = [ep for ep in endpoints if ep.healthy]
        return healthy or list(endpoints)
