"""Pools of engine endpoints: who exists, what each serves, and who is told when one comes or goes.

Discovery (a static list or a Kubernetes watch) adds and removes endpoints here; the runtime listens and
starts or stops the endpoint's scraper and tells the router. Request handling reads `candidates(model)`:
healthy endpoints that serve the model and are not draining, of one pool or of all. Pools group endpoints
that are interchangeable; a cascade (on-prem, then EKS, then a managed API) is an ordered list of pools
(docs/gateway.md). Draining: a pod with a deletion timestamp (Spot interruption, consolidation, rollout)
stays registered, so its requests in flight finish and its gauges stay visible, but takes no new request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """What discovery knows about an endpoint before the gateway has talked to it."""

    url: str
    pool: str = "default"
    kv_events: str | None = None
    models: tuple[str, ...] = ()

    @property
    def id(self) -> EndpointId:
        return EndpointId(self.url.split("://", 1)[-1].rstrip("/"))


class EndpointListener(Protocol):
    def endpoint_added(self, state: EndpointState, spec: EndpointSpec) -> None: ...

    def endpoint_removed(self, state: EndpointState) -> None: ...


class EndpointRegistry:
    """All endpoints by id; the one place that decides which endpoints may take a request for a model."""

    def __init__(self) -> None:
        self._states: dict[EndpointId, EndpointState] = {}
        self._specs: dict[EndpointId, EndpointSpec] = {}
        self._cards: dict[EndpointId, dict[str, dict[str, Any]]] = {}
        self._listeners: list[EndpointListener] = []
        self._by_model: dict[str, list[EndpointState]] | None = None
        self._draining: set[EndpointId] = set()

    def subscribe(self, listener: EndpointListener) -> None:
        self._listeners.append(listener)

    def add(self, spec: EndpointSpec) -> EndpointState:
        """Adds an endpoint (or returns the existing one with the same id)."""
        if spec.id in self._states:
            return self._states[spec.id]
        state = EndpointState(
            id=spec.id, url=spec.url.rstrip("/"), pool=spec.pool, models=frozenset(spec.models)
        )
        self._states[spec.id] = state
        self._specs[spec.id] = spec
        self._by_model = None
        log.info("endpoint %s added to pool %s", spec.id, spec.pool)
        for listener in self._listeners:
            listener.endpoint_added(state, spec)
        return state

    def remove(self, endpoint_id: EndpointId) -> None:
        state = self._states.pop(endpoint_id, None)
        if state is None:
            return
        self._specs.pop(endpoint_id, None)
        self._cards.pop(endpoint_id, None)
        self._draining.discard(endpoint_id)
        self._by_model = None
        state.healthy = False
        log.info("endpoint %s removed", endpoint_id)
        for listener in self._listeners:
            listener.endpoint_removed(state)

    def set_models(self, state: EndpointState, cards: dict[str, dict[str, Any]]) -> None:
        """Records what an engine's /v1/models reported."""
        if state.id not in self._states:
            return
        self._cards[state.id] = cards
        models = frozenset(cards) | frozenset(self._specs[state.id].models)
        if models != state.models:
            state.models = models
            self._by_model = None

    def adapter_changed(self, state: EndpointState, name: str, *, loaded: bool) -> None:
        """A LoRA adapter loaded or unloaded through the gateway: routable at once, before the next read
        of the engine's /v1/models confirms it."""
        if state.id not in self._states:
            return
        cards = dict(self._cards.get(state.id, {}))
        if loaded:
            cards.setdefault(name, {"id": name, "object": "model", "owned_by": "vllm"})
        else:
            cards.pop(name, None)
        self.set_models(state, cards)

    def health_changed(self, state: EndpointState, healthy: bool) -> None:
        self._by_model = None

    def drain(self, endpoint_id: EndpointId) -> None:
        """No new requests for this endpoint; those in flight finish. Removal (`remove`) comes later."""
        if endpoint_id in self._states and endpoint_id not in self._draining:
            self._draining.add(endpoint_id)
            log.info("endpoint %s draining: no new requests", endpoint_id)

    def draining(self, endpoint_id: str) -> bool:
        return endpoint_id in self._draining

    def pool_members(self, pool: str) -> list[EndpointState]:
        """Every registered endpoint of a pool (healthy or not): the base of the outlier ejection share."""
        return [s for s in self._states.values() if s.pool == pool]

    def get(self, endpoint_id: EndpointId) -> EndpointState | None:
        return self._states.get(endpoint_id)

    def spec(self, endpoint_id: EndpointId) -> EndpointSpec | None:
        return self._specs.get(endpoint_id)

    def all(self) -> list[EndpointState]:
        return list(self._states.values())

    def _index(self) -> dict[str, list[EndpointState]]:
        by_model: dict[str, list[EndpointState]] = {}
        for state in self._states.values():
            for model in state.models:
                by_model.setdefault(model, []).append(state)
        self._by_model = by_model
        return by_model

    def known_model(self, model: str) -> bool:
        by_model = self._by_model if self._by_model is not None else self._index()
        return model in by_model

    def candidates(
        self,
        model: str,
        exclude: Callable[[EndpointState], bool] | None = None,
        *,
        pool: str | None = None,
    ) -> list[EndpointState]:
        """Healthy, not draining endpoints serving `model`, in insertion order: of `pool`, or of all."""
        by_model = self._by_model if self._by_model is not None else self._index()
        drain = self._draining
        found = [
            s
            for s in by_model.get(model, ())
            if s.healthy and (pool is None or s.pool == pool) and (not drain or s.id not in drain)
        ]
        return [s for s in found if not exclude(s)] if exclude is not None else found

    def model_cards(self) -> list[dict[str, Any]]:
        """The union of every endpoint's models, first card seen wins, sorted by id."""
        union: dict[str, dict[str, Any]] = {}
        for endpoint_id, state in self._states.items():
            cards = self._cards.get(endpoint_id, {})
            for model in state.models:
                union.setdefault(
                    model, cards.get(model) or {"id": model, "object": "model", "owned_by": "eksinfer"}
                )
        return [union[k] for k in sorted(union)]

    def ready(self) -> bool:
        return any(s.healthy and s.models for s in self._states.values())
