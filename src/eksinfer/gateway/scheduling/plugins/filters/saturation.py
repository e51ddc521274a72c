"""`saturation-filter`: the load gate. Drop endpoints whose scraped queue or KV usage says they are saturated,
unless all are (then keep all, and the scorers pick the least bad).

Saturated: `num_waiting >= max_waiting` (default 32, llm-d's saturation detector queue threshold is 5 per
endpoint for its admission gate; 32 leaves room for bursty prefix reuse) or `kv_usage >= max_kv_usage` (0.98).
Stale metrics are ignored here (the gateway's own in-flight counts in the scorers still apply).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from eksinfer.gateway.scheduling.data import ENDPOINT_METRICS
from eksinfer.gateway.scheduling.framework import EndpointState, RoutingRequest, SchedulingContext
from eksinfer.gateway.scheduling.registry import PluginBase, PluginParams, plugin


@plugin("saturation-filter", "filter", consumes={ENDPOINT_METRICS})
class SaturationFilter(PluginBase):
    class Params(PluginParams):
        max_waiting: int = Field(32, ge=1, description="waiting requests at which an endpoint is saturated")
        max_kv_usage: float = Field(0.98, gt=0, le=1, description="KV usage (0..1) at which it is saturated")

    params: Params

    def saturated(self, ep: EndpointState) -> bool:
        if ep.stale:
            return False
        p = self.params
        return (ep.num_waiting or 0) >= p.max_waiting or (ep.kv_usage or 0.0) >= p.max_kv_usage

    def filter(
        self, ctx: SchedulingContext, request: RoutingRequest, endpoints: Sequence[EndpointState]
    ) -> list[EndpointState]:
        ok = [ep for ep in endpoints if not self.saturated(ep)]
        return ok or list(endpoints)
