"""`kv-cache-utilization-scorer`: prefer endpoints with free KV-cache blocks.

Score `1 - vllm:kv_cache_usage_perc` (0..1), as llm-d's kvcacheutilization scorer. Unknown usage scores 0.5
(neither preferred nor avoided).
"""

from __future__ import annotations

from collections.abc import Sequence

from eksinfer.gateway.scheduling.data import ENDPOINT_METRICS
from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState, RoutingRequest, SchedulingContext
from eksinfer.gateway.scheduling.registry import PluginBase, plugin


@plugin("kv-cache-utilization-scorer", "scorer", consumes={ENDPOINT_METRICS})
class KvCacheUtilizationScorer(PluginBase):
    def score(
        self, ctx: SchedulingContext, request: RoutingRequest, endpoints: Sequence[EndpointState]
    ) -> dict[EndpointId, float]:
        return {
            ep.id: 0.5 if ep.kv_usage is None else 1.0 - min(1.0, max(0.0, ep.kv_usage)) for ep in endpoints
        }
