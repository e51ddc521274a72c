"""`precise-prefix-cache-scorer`: share of the prompt's full blocks an endpoint really holds.

Score `matched_tokens / (full blocks x block_size)` where `matched_tokens` is the longest prefix of the
request's block-key chain present in the KV-event-fed index (kvcache.index), speculative entries included
(llm-d precise-prefix-cache scorer: `min(1, longest_prefix / total_blocks)`). Without token ids (no
tokenizer) every endpoint scores 0, and the router falls back to the approximate index (see docs/routing.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from eksinfer.gateway.scheduling.data import BLOCK_KEYS, MATCHED_TOKENS, PRECISE_MATCH, TOKEN_IDS
from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState, RoutingRequest, SchedulingContext
from eksinfer.gateway.scheduling.prefix import endpoint_block_size, precise_matches, speculate
from eksinfer.gateway.scheduling.registry import PluginBase, plugin


@plugin(
    "precise-prefix-cache-scorer",
    "scorer",
    consumes={TOKEN_IDS, BLOCK_KEYS},
    produces={PRECISE_MATCH, MATCHED_TOKENS},
)
class PrecisePrefixCacheScorer(PluginBase):
    def score(
        self, ctx: SchedulingContext, request: RoutingRequest, endpoints: Sequence[EndpointState]
    ) -> dict[EndpointId, float]:
        matches = precise_matches(request, endpoints, self.deps)
        tokens = len(request.prompt_token_ids or ())
        out: dict[EndpointId, float] = {}
        for ep in endpoints:
            size = endpoint_block_size(ep, self.deps)
            hashable = (tokens // size) * size
            out[ep.id] = min(1.0, matches[ep.id] / hashable) if matches and hashable else 0.0
        return out

    def on_routed(self, request: RoutingRequest, endpoint: EndpointState) -> None:
        speculate(request, endpoint, self.deps)
