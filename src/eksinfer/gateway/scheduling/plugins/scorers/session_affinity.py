"""`session-affinity-scorer`: keep a session (header, default `x-session-id`) on one endpoint.

Rendezvous hashing: the endpoint with the highest `hash(session, endpoint_id)` scores 1.0, the others 0.
Unlike a hash ring it needs no state, and removing an endpoint only moves the sessions that were on it.
Requests without a session score 1.0 everywhere (neutral).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState, RoutingRequest, SchedulingContext
from eksinfer.gateway.scheduling.registry import PluginBase, plugin


def rendezvous_weight(session: str, endpoint_id: str) -> int:
    digest = hashlib.blake2b(f"{session}\x00{endpoint_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@plugin("session-affinity-scorer", "scorer")
class SessionAffinityScorer(PluginBase):
    def score(
        self, ctx: SchedulingContext, request: RoutingRequest, endpoints: Sequence[EndpointState]
    ) -> dict[EndpointId, float]:
        if not request.session_id or not endpoints:
            return {ep.id: 1.0 for ep in endpoints}
        best = max(endpoints, key=lambda ep: rendezvous_weight(request.session_id or "", ep.id))
        return {ep.id: 1.0 if ep.id == best.id else 0.0 for ep in endpoints}
