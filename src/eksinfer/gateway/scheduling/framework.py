"""The routing framework: interfaces for filters, scorers and pickers, and the runner that applies a profile.

A profile is filters (each narrows the candidate endpoints), then weighted scorers (each returns a score in
[0, 1] per endpoint), then one picker. The runner clamps every score to [0, 1] and sums `weight * score`;
plugins never normalise each other. Scoring is synchronous and pure over a snapshot of endpoint state: all I/O
(scraping, KV events, discovery) happens in background tasks that update the state this module reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NewType, Protocol, runtime_checkable

EndpointId = NewType("EndpointId", str)


@dataclass(slots=True)
class EndpointState:
    """What the gateway knows about one engine endpoint, updated by background tasks, read by plugins."""

    id: EndpointId
    url: str
    pool: str = "default"
    models: frozenset[str] = frozenset()
    healthy: bool = True
    # From the engine's /metrics (None until the first scrape).
    num_running: int | None = None
    num_waiting: int | None = None
    kv_usage: float | None = None
    num_gpu_blocks: int | None = None
    block_size: int | None = None
    lora_adapters: frozenset[str] = frozenset()
    scraped_at: float | None = None
    stale: bool = True
    # Cumulative `_count` of vllm:request_prefill_time_seconds and `_sum`s of it and of
    # vllm:request_prefill_kv_computed_tokens, `_count` and `_sum` of vllm:inter_token_latency_seconds
    # (None when the page lacks them): shedding's prefill fit (resilience/prefill.py).
    prefill_requests: float | None = None
    prefill_seconds: float | None = None
    prefill_tokens: float | None = None
    itl_count: float | None = None
    itl_seconds: float | None = None
    # Tracked by the gateway itself, released at first token (prompt tokens) and at the end (requests).
    inflight_requests: int = 0
    inflight_prompt_tokens: int = 0
    # The part of inflight_prompt_tokens from streamed requests: prompts not yet prefilled (a non-streamed
    # answer's first byte comes with its last, long after its prefill). Shedding's prompts ahead.
    inflight_streamed_prompt_tokens: int = 0


@dataclass(slots=True)
class RoutingRequest:
    """One request as the scheduler sees it. Token ids and block hashes are filled before scheduling when the
    profile needs them (tokenization and hashing run off the event loop)."""

    model: str
    prompt_text: str
    headers: Mapping[str, str] = field(default_factory=dict)
    prompt_token_ids: Sequence[int] | None = None
    block_hashes: Sequence[int] | None = None
    session_id: str | None = None
    lora: str | None = None
    # Per-plugin scratch space (e.g. the prefix scorer stores matched blocks per endpoint for the
    # explanation).
    annotations: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class SchedulingContext:
    """Per-decision context handed to every plugin; `now` is a monotonic timestamp."""

    now: float
    preset: str


@dataclass(frozen=True, slots=True)
class ScoredEndpoint:
    endpoint: EndpointState
    total: float
    scores: Mapping[str, float]


@dataclass(slots=True)
class InflightTicket:
    """What one routed request added to its endpoint's in-flight counters, so the release is exact and
    idempotent (first token releases the prompt tokens, the end releases the request)."""

    prompt_tokens: int
    prompt_released: bool = False
    finished: bool = False
    streamed: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one scheduling run, explainable: every scorer's score for every candidate.

    The fields after `candidates` are filled by the router facade (they default so plugins and tests can build
    a bare Decision): the preset/profile that decided, the prompt size, the predicted cache hit on the chosen
    endpoint, the in-flight ticket released by `on_first_token` / `on_finish`, and the predicted hits on
    every candidate.
    """

    endpoint: EndpointState
    reason: str
    candidates: tuple[ScoredEndpoint, ...]
    preset: str = ""
    prompt_tokens: int = 0
    predicted_cached_tokens: int = 0
    ticket: InflightTicket | None = field(default=None, compare=False, repr=False)
    # Predicted cached tokens per candidate endpoint id (prefix-index presets; capped at prompt_tokens by
    # the reader): the cascade's shedding prices the prompt's prefill on every candidate, not just this one.
    cached_tokens_by_endpoint: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def explain(self, max_candidates: int = 8) -> str:
        """One line for a debug header or a log: chosen endpoint, reason, then each candidate's scores."""
        parts = [
            f"endpoint={self.endpoint.id} preset={self.preset or '-'} reason={self.reason}"
            f" prompt_tokens={self.prompt_tokens} predicted_cached_tokens={self.predicted_cached_tokens}"
        ]
        ranked = sorted(self.candidates, key=lambda c: c.total, reverse=True)[:max_candidates]
        for cand in ranked:
            scores = ",".join(f"{name}={value:.3f}" for name, value in cand.scores.items())
            parts.append(f"{cand.endpoint.id}:total={cand.total:.3f}" + (f"[{scores}]" if scores else ""))
        return "; ".join(parts)


@runtime_checkable
class Filter(Protocol):
    def filter(
        self, ctx: SchedulingContext, request: RoutingRequest, endpoints: Sequence[EndpointState]
    ) -> list[EndpointState]: ...


@runtime_checkable
class Scorer(Protocol):
    def score(
        self, ctx: SchedulingContext, request: RoutingRequest, endpoints: Sequence[EndpointState]
    ) -> dict[EndpointId, float]: ...


@runtime_checkable
class Picker(Protocol):
    def pick(self, ctx: SchedulingContext, scored: Sequence[ScoredEndpoint]) -> ScoredEndpoint: ...


@runtime_checkable
class RoutedHook(Protocol):
    """Optional on any plugin: told the outcome after each decision, to keep router-side memory or index the
    routed prompt speculatively (llm-d's PreRequest). Must be cheap and must not do I/O."""

    def on_routed(self, request: RoutingRequest, endpoint: EndpointState) -> None: ...


@runtime_checkable
class ReasonHook(Protocol):
    """Optional on a picker: names why it chose, in one word, when its choice ignores the scores (e.g.
    round-robin); None leaves the reason to the scores."""

    def reason(self) -> str | None: ...
