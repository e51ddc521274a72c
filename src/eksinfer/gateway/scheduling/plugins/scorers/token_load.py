"""`token-load-scorer`: prefer endpoints with less uncached prompt work in flight.

Score `1 - min(1, (inflight_prompt_tokens + lookahead) / threshold_tokens)` where `inflight_prompt_tokens`
are the uncached prompt tokens this gateway sent and whose first token has not come back (llm-d
`token-load-scorer`; the lookahead adds this request's own prompt tokens, llm-d's "lookahead" form). The
threshold is `peak_prefill_tokens_per_s x max_wait_s` (llm-d sizes it 20,480 tok/s x 14 s); the default
32,768 = 8,192 tok/s x 4 s suits small simulated replicas. When every candidate is past the threshold the
scores fall back to min-max so the least loaded still wins.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from eksinfer.gateway.scheduling.data import ENDPOINT_METRICS
from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState, RoutingRequest, SchedulingContext
from eksinfer.gateway.scheduling.prefix import prompt_tokens
from eksinfer.gateway.scheduling.registry import PluginBase, PluginParams, plugin


@plugin("token-load-scorer", "scorer", consumes={ENDPOINT_METRICS})
class TokenLoadScorer(PluginBase):
    class Params(PluginParams):
        threshold_tokens: int = Field(32768, gt=0, description="in-flight prompt tokens that score 0")
        lookahead: bool = Field(True, description="add this request's prompt tokens to each endpoint's load")

    params: Params

    def score(
        self, ctx: SchedulingContext, request: RoutingRequest, endpoints: Sequence[EndpointState]
    ) -> dict[EndpointId, float]:
        extra = prompt_tokens(request) if self.params.lookahead else 0
        loads = {ep.id: ep.inflight_prompt_tokens + extra for ep in endpoints}
        limit = self.params.threshold_tokens
        if loads and min(loads.values()) >= limit:
            lo, hi = min(loads.values()), max(loads.values())
            return {eid: 1.0 if hi == lo else (hi - v) / (hi - lo) for eid, v in loads.items()}
        return {eid: 1.0 - min(1.0, v / limit) for eid, v in loads.items()}
