"""`kv-cache-utilization-scorer`: prefer endpoints with free KV-cache blocks.

Score `1 - vllm:kv_cache_usage_perc` (0..1), as llm-d's kvcacheutilization scorer. Unknown usage scores 0.5
(neither preferred nor avoided).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState, RoutingRequest, SchedulingContext
from eksinfer.gateway.scheduling.registry import PluginDeps, PluginParams


class KvCacheUtilizationScorer:
    type_name: ClassVar[str] = "kv-cache-utilization-scorer"
    kind: ClassVar[Literal["scorer"]] = "scorer"

    class Params(PluginParams):
        pass

    def __init__(self, params: Params, deps: PluginDeps) -> None:
        self.params = params

    def score(
        self, ctx: SchedulingContext, request: RoutingRequest, endpoints: Sequence[EndpointState]
    ) -> dict[EndpointId, float]:
        return {
            ep.id: 0.5 if ep.kv_usage is None else 1.0 - min(1.0, max(0.0, ep.kv_usage)) for ep in endpoints
        }
