"""In-flight accounting and the router's statistics.

`InflightLedger`: `charge` adds one request and its predicted *uncached* prompt tokens to the chosen
endpoint's `inflight_requests` / `inflight_prompt_tokens` (and, for a streamed request,
`inflight_streamed_prompt_tokens`); the first token releases the tokens and the end releases the request,
each exactly once through the decision's ticket.

`RouterStats`: decisions by (profile, reason), prompt and predicted-cached token totals, routing time.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from eksinfer.gateway.scheduling.framework import Decision, EndpointState, InflightTicket


class InflightLedger:
    @staticmethod
    def charge(endpoint: EndpointState, uncached_tokens: int, streamed: bool = False) -> InflightTicket:
        ticket = InflightTicket(prompt_tokens=uncached_tokens, streamed=streamed)
        endpoint.inflight_requests += 1
        endpoint.inflight_prompt_tokens += ticket.prompt_tokens
        if streamed:
            endpoint.inflight_streamed_prompt_tokens += ticket.prompt_tokens
        return ticket

    @staticmethod
    def first_token(decision: Decision) -> None:
        """The prompt is prefilled: release its uncached tokens from the endpoint's in-flight load."""
        ticket = decision.ticket
        if ticket is None or ticket.prompt_released:
            return
        ticket.prompt_released = True
        ep = decision.endpoint
        ep.inflight_prompt_tokens = max(0, ep.inflight_prompt_tokens - ticket.prompt_tokens)
        if ticket.streamed:
            ep.inflight_streamed_prompt_tokens = max(
                0, ep.inflight_streamed_prompt_tokens - ticket.prompt_tokens
            )

    @classmethod
    def finish(cls, decision: Decision) -> bool:
        """The request ended: release what is left of its load; False when it was already released."""
        cls.first_token(decision)
        ticket = decision.ticket
        if ticket is None or ticket.finished:
            return False
        ticket.finished = True
        ep = decision.endpoint
        ep.inflight_requests = max(0, ep.inflight_requests - 1)
        return True


class RouterStats:
    def __init__(self) -> None:
        self.decisions: Counter[tuple[str, str]] = Counter()
        self.prompt_tokens_total = 0
        self.predicted_cached_total = 0
        self.route_s_total = 0.0
        self.route_s_max = 0.0

    def decided(self, decision: Decision, elapsed_s: float) -> None:
        self.decisions[(decision.preset, decision.reason)] += 1
        self.prompt_tokens_total += decision.prompt_tokens
        self.predicted_cached_total += decision.predicted_cached_tokens
        self.route_s_total += elapsed_s
        self.route_s_max = max(self.route_s_max, elapsed_s)

    def failed(self, preset: str) -> None:
        self.decisions[(preset, "failed")] += 1

    def as_dict(self) -> dict[str, Any]:
        routed = sum(n for (_, reason), n in self.decisions.items() if reason != "failed")
        total = self.prompt_tokens_total
        return {
            "predicted_hit_ratio": self.predicted_cached_total / total if total else 0.0,
            "decisions": {f"{preset}/{reason}": n for (preset, reason), n in sorted(self.decisions.items())},
            "route_ms_mean": 1000 * self.route_s_total / routed if routed else 0.0,
            "route_ms_max": 1000 * self.route_s_max,
        }
