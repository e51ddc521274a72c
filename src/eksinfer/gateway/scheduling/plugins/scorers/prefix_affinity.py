"""`prefix-affinity-scorer`: send a prefix family back to the endpoint that served it last, even after the
engines evicted it.

When total KV capacity is smaller than the working set, prefixes are evicted and come back cold. A router that
places each cold comeback on the least-loaded replica scatters families over all replicas, so every replica
churns through every family (LRU at its worst). Remembering a "home" per family keeps the churn local: a
family returns to one replica, as a static partition would. (Consistent-hash and session-affinity routers get
this for free; llm-d's prefix-cache-affinity filter and SGLang's cache_aware tree keep similar long memory.)

Families are keyed by the request's block key at a few depths (`depths`, default 4, 16 and 64 blocks: 64, 256
and 1,024 tokens at block size 16); the deepest depth the request reaches and that has a home wins, so a
long shared system prompt and a short shared preamble are told apart. Score 1 for the home endpoint, 0 for
the others (and 0 for all when there is no home). The map is an LRU of `capacity` entries (default 65,536,
about 10 MiB), updated after each decision through `on_routed`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from pydantic import Field

from eksinfer.gateway.scheduling.data import APPROX_KEYS, BLOCK_KEYS, TOKEN_IDS
from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState, RoutingRequest, SchedulingContext
from eksinfer.gateway.scheduling.prefix import approx_request_keys, request_block_keys, speculate
from eksinfer.gateway.scheduling.registry import PluginBase, PluginDeps, PluginParams, plugin
from eksinfer.kvcache.index import BlockKey


@plugin("prefix-affinity-scorer", "scorer", consumes={TOKEN_IDS, BLOCK_KEYS}, produces={APPROX_KEYS})
class PrefixAffinityScorer(PluginBase):
    class Params(PluginParams):
        depths: tuple[int, ...] = Field((4, 16, 64), min_length=1, description="family key depths in blocks")
        capacity: int = Field(65536, ge=1, description="families remembered (LRU)")

    def __init__(self, params: Params, deps: PluginDeps) -> None:
        self.depths = tuple(sorted(set(params.depths), reverse=True))
        self.capacity = params.capacity
        self.deps = deps
        self._homes: OrderedDict[BlockKey, str] = OrderedDict()

    def _family_keys(self, request: RoutingRequest) -> list[BlockKey]:
        """Block keys at the configured depths, deepest first."""
        keys = request_block_keys(request, self.deps.block_size)
        if keys is None:
            keys = approx_request_keys(request, self.deps, use_tokens=False)
        return [keys[d - 1] for d in self.depths if d <= len(keys)] or keys[-1:]

    def score(
        self, ctx: SchedulingContext, request: RoutingRequest, endpoints: Sequence[EndpointState]
    ) -> dict[EndpointId, float]:
        home = None
        for key in self._family_keys(request):
            home = self._homes.get(key)
            if home is not None:
                break
        return {ep.id: 1.0 if ep.id == home else 0.0 for ep in endpoints}

    def on_routed(self, request: RoutingRequest, endpoint: EndpointState) -> None:
        """Make the chosen endpoint the home of every family key of the request."""
        speculate(request, endpoint, self.deps)
        homes = self._homes
        for key in self._family_keys(request):
            homes[key] = endpoint.id
            homes.move_to_end(key)
        while len(homes) > self.capacity:
            homes.popitem(last=False)

    def __len__(self) -> int:
        return len(self._homes)
