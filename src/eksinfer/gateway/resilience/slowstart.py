"""Slow start: an endpoint that joins a serving pool, or comes back to it, takes a growing share of its load.

The ramp is Envoy's `slow_start_config` (cluster.v3.Cluster.SlowStartConfig): over `window_s` an endpoint's
weight grows as `max(min_weight, (t / window_s) ^ (1 / aggression))`, from `min_weight` (10 %) to 1;
`aggression` 1 is linear, above 1 it ramps faster at first. Envoy multiplies its load balancer's weights; our
routing presets are filters, scorers and a picker (round-robin, least load, KV-aware cost), and a weight
inside each would need each to honour it. The weight is applied once, before any of them runs, as a ceiling
on the endpoint's requests in flight: at most `weight x` the mean in flight of the pool's fully weighted
endpoints among the candidates (at least one, so it warms up at low load too). A picker that would give it
more (a cold engine looks idle to a least-load scorer) is held to the ceiling; one that gives it less keeps
giving less. With similar requests, in flight is rate times latency (Little's law), so the ceiling bounds
its share of requests by the weight, and a cold engine that answers slowly gets even fewer.
"""

from __future__ import annotations

from collections.abc import Sequence

from eksinfer.gateway.scheduling.framework import EndpointState


class SlowStartRamp:
    """The weight curve and the in-flight ceiling; stateless (the detector keeps when each ramp began)."""

    __slots__ = ("aggression", "min_weight", "window_s")

    def __init__(self, window_s: float, aggression: float = 1.0, min_weight: float = 0.1) -> None:
        self.window_s, self.aggression, self.min_weight = window_s, aggression, min_weight

    @property
    def enabled(self) -> bool:
        return self.window_s > 0

    def weight(self, elapsed_s: float) -> float:
        """The endpoint's weight `elapsed_s` into its ramp: 1 once the window has passed."""
        if elapsed_s >= self.window_s:
            return 1.0
        share = float((max(elapsed_s, 0.0) / self.window_s) ** (1.0 / self.aggression))
        return max(self.min_weight, share)

    @staticmethod
    def admits(ep: EndpointState, weight: float, peers: Sequence[EndpointState]) -> bool:
        """Whether `ep` may take one more request now; `peers` are its pool's fully weighted candidates."""
        if not peers:
            return True  # nothing to compare with: the pool's load has nowhere else to go
        mean = sum(p.inflight_requests for p in peers) / len(peers)
        return ep.inflight_requests < max(1.0, weight * mean)
