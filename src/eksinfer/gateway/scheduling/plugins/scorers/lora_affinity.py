"""`lora-affinity-scorer`: prefer endpoints that already serve the requested LoRA adapter.

1.0 when the adapter is loaded (`vllm:lora_requests_info` running adapters), `room_score` (0.6) when the
endpoint has a free adapter slot (`max_loras`, default 4, vLLM's `--max-loras` default is 1; set it to your
engines'), else 0 (llm-d lora-affinity: 1.0 / 0.8 / 0.6 / 0). Requests without an adapter score 1.0
everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from eksinfer.gateway.scheduling.data import ENDPOINT_METRICS
from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState, RoutingRequest, SchedulingContext
from eksinfer.gateway.scheduling.registry import PluginBase, PluginParams, plugin


@plugin("lora-affinity-scorer", "scorer", consumes={ENDPOINT_METRICS})
class LoraAffinityScorer(PluginBase):
    class Params(PluginParams):
        max_loras: int = Field(4, ge=1, description="adapters an engine holds at once (vLLM --max-loras)")
        room_score: float = Field(
            0.6, ge=0, le=1, description="score of an endpoint with a free adapter slot"
        )

    params: Params

    def score(
        self, ctx: SchedulingContext, request: RoutingRequest, endpoints: Sequence[EndpointState]
    ) -> dict[EndpointId, float]:
        lora = request.lora
        if not lora:
            return {ep.id: 1.0 for ep in endpoints}
        out: dict[EndpointId, float] = {}
        for ep in endpoints:
            if lora in ep.lora_adapters:
                out[ep.id] = 1.0
            elif len(ep.lora_adapters) < self.params.max_loras:
                out[ep.id] = self.params.room_score
            else:
                out[ep.id] = 0.0
        return out
