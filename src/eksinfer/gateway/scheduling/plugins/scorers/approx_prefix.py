"""`approx-prefix-cache-scorer`: share of the prompt's blocks this gateway recently sent to an endpoint.

No engine events: the router records the blocks of every request it routes (kvcache.index.PrefixIndex in
router-side mode, one LRU per endpoint bounded by its `num_gpu_blocks`) and scores `matched / total` blocks
(llm-d approximate prefix producer + prefix-cache scorer). Blocks are token blocks when the request was
tokenized and `use_tokens` is on, else character blocks of `block_size x 4` characters (llm-d: 4 characters
per token).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from eksinfer.gateway.scheduling.data import APPROX_KEYS, APPROX_MATCH, MATCHED_TOKENS, TOKEN_IDS
from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState, RoutingRequest, SchedulingContext
from eksinfer.gateway.scheduling.prefix import approx_matches, speculate
from eksinfer.gateway.scheduling.registry import PluginBase, PluginParams, plugin


@plugin(
    "approx-prefix-cache-scorer",
    "scorer",
    consumes={TOKEN_IDS},
    produces={APPROX_KEYS, APPROX_MATCH, MATCHED_TOKENS},
)
class ApproxPrefixCacheScorer(PluginBase):
    class Params(PluginParams):
        use_tokens: bool = Field(False, description="key token blocks when token ids exist (else characters)")

    params: Params

    def score(
        self, ctx: SchedulingContext, request: RoutingRequest, endpoints: Sequence[EndpointState]
    ) -> dict[EndpointId, float]:
        matches, total = approx_matches(request, endpoints, self.deps, use_tokens=self.params.use_tokens)
        if total == 0:
            return {ep.id: 0.0 for ep in endpoints}
        return {ep.id: matches[ep.id] / total for ep in endpoints}

    def on_routed(self, request: RoutingRequest, endpoint: EndpointState) -> None:
        speculate(request, endpoint, self.deps)
