"""Builds profiles from config and runs one: filters, then `total = sum(weight x clamp(score, 0, 1))`, then
the picker (llm-d scheduler_profile.go: scores clamped to [0, 1] and summed with their weights, not
normalised).

A profile also says what request data it needs (`needs_tokens`) so the router tokenizes only when a plugin
would use the token ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eksinfer.errors import UnavailableError, UnknownNameError
from eksinfer.gateway.scheduling.config import ProfileConfig, RoutingConfig
from eksinfer.gateway.scheduling.framework import (
    EndpointId,
    EndpointState,
    Filter,
    Picker,
    RoutingRequest,
    SchedulingContext,
    ScoredEndpoint,
    Scorer,
)
from eksinfer.gateway.scheduling.presets import builtin_presets
from eksinfer.gateway.scheduling.registry import PluginDeps, Registry, builtin_registry

# Scorers that read token ids or prefix keys; a profile with none of them never tokenizes.
TOKEN_SCORERS = frozenset(
    {"precise-prefix-cache-scorer", "kv-cost-scorer", "approx-prefix-cache-scorer", "prefix-affinity-scorer"}
)


class NoEndpointError(UnavailableError):
    """No endpoint can take the request (none serve the model, or filters removed all): HTTP 503."""


@dataclass(frozen=True, slots=True)
class WeightedScorer:
    name: str
    type_name: str
    scorer: Scorer
    weight: float


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    filters: tuple[tuple[str, Filter], ...]
    scorers: tuple[WeightedScorer, ...]
    picker: Picker
    picker_type: str
    needs_tokens: bool


def build_profile(
    name: str, config: ProfileConfig, deps: PluginDeps, registry: Registry, *, field: str
) -> Profile:
    """Instantiate every plugin of a profile; unknown types and bad parameters name their field."""
    filters = tuple(
        (
            ref.label,
            registry.create("filter", ref.type, ref.parameters, deps, field=f"{field}.filters[{i}].type"),
        )
        for i, ref in enumerate(config.filters)
    )
    scorers = tuple(
        WeightedScorer(
            ref.label,
            ref.type,
            registry.create("scorer", ref.type, ref.parameters, deps, field=f"{field}.scorers[{i}].type"),
            ref.weight,
        )
        for i, ref in enumerate(config.scorers)
    )
    picker = registry.create(
        "picker", config.picker.type, config.picker.parameters, deps, field=f"{field}.picker.type"
    )
    needs = any(s.type_name in TOKEN_SCORERS for s in scorers)
    return Profile(name, filters, scorers, picker, config.picker.type, needs)


def build_profiles(
    config: RoutingConfig, deps: PluginDeps, registry: Registry | None = None
) -> dict[str, Profile]:
    """Every preset plus the user's profiles (a user profile may shadow a preset's name)."""
    registry = registry or builtin_registry()
    configs: dict[str, ProfileConfig] = builtin_presets()
    configs.update(config.profiles)
    if config.preset not in configs:
        raise UnknownNameError("routing preset", config.preset, sorted(configs), field="routing.preset")
    return {
        name: build_profile(
            name,
            cfg,
            deps,
            registry,
            field=f"routing.profiles.{name}" if name in config.profiles else f"preset {name}",
        )
        for name, cfg in configs.items()
    }


def notify_routed(profile: Profile, request: RoutingRequest, endpoint: EndpointState) -> None:
    """Call `on_routed` on every plugin of the profile that has it (router-side memory)."""
    for ws in profile.scorers:
        hook = getattr(ws.scorer, "on_routed", None)
        if hook is not None:
            hook(request, endpoint)


def _clamp(value: float) -> float:
    return 0.0 if value != value or value < 0 else (1.0 if value > 1 else value)  # NaN -> 0


def run_profile(
    profile: Profile, ctx: SchedulingContext, request: RoutingRequest, endpoints: Sequence[EndpointState]
) -> tuple[ScoredEndpoint, tuple[ScoredEndpoint, ...]]:
    """Apply the profile; returns the picked endpoint and every scored candidate (for the explanation)."""
    candidates: list[EndpointState] = list(endpoints)
    for label, flt in profile.filters:
        candidates = flt.filter(ctx, request, candidates)
        if not candidates:
            raise NoEndpointError(f"no endpoint left after filter {label}")
    per_scorer: list[tuple[str, float, Mapping[EndpointId, float]]] = [
        (ws.name, ws.weight, ws.scorer.score(ctx, request, candidates)) for ws in profile.scorers
    ]
    scored: list[ScoredEndpoint] = []
    for ep in candidates:  # a plain loop: this runs for every request and every candidate
        values: dict[str, float] = {}
        total = 0.0
        for name, weight, scores in per_scorer:
            value = values[name] = _clamp(scores.get(ep.id, 0.0))
            total += weight * value
        scored.append(ScoredEndpoint(ep, total, values))
    result = tuple(scored)
    return profile.picker.pick(ctx, result), result
