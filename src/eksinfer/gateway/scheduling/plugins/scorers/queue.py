"""`queue-scorer`: prefer endpoints with fewer waiting requests.

Min-max over the candidates of the scraped `vllm:num_requests_waiting`: `(max_q - q) / (max_q - min_q)`, all
equal -> 1.0 (llm-d `queue-scorer`, queuedepth/queue.go). Missing or stale metrics count as the gateway's own
in-flight request count, the freshest signal it has.
"""

from __future__ import annotations

from collections.abc import Sequence

from eksinfer.gateway.scheduling.data import ENDPOINT_METRICS
from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState, RoutingRequest, SchedulingContext
from eksinfer.gateway.scheduling.registry import PluginBase, plugin


def waiting(ep: EndpointState) -> int:
    if ep.num_waiting is None or ep.stale:
        return ep.inflight_requests
    return ep.num_waiting


@plugin("queue-scorer", "scorer", consumes={ENDPOINT_METRICS})
class QueueScorer(PluginBase):
    def score(
        self, ctx: SchedulingContext, request: RoutingRequest, endpoints: Sequence[EndpointState]
    ) -> dict[EndpointId, float]:
        queues = {ep.id: waiting(ep) for ep in endpoints}
        lo, hi = min(queues.values(), default=0), max(queues.values(), default=0)
        if hi == lo:
            return dict.fromkeys(queues, 1.0)
        return {eid: (hi - q) / (hi - lo) for eid, q in queues.items()}
