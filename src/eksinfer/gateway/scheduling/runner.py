"""Builds profiles from config and runs one: filters, then `total = sum(weight x clamp(score, 0, 1))`, then
the picker (llm-d scheduler_profile.go: scores clamped to [0, 1] and summed with their weights, not
normalised).

Building a profile checks its plugins' data contracts (scheduling.data): every key a plugin consumes is
supplied by the gateway or produced by a plugin that runs before it (filters, then scorers, then the picker,
each in order), else a `ConfigError` names the plugin. The profile then knows what request data it needs
(`needs_tokens`: the router tokenizes only when a plugin consumes token ids or block keys) and which plugins
want to hear about each decision (`on_routed`) or name its reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from eksinfer.errors import ConfigError, UnavailableError, UnknownNameError
from eksinfer.gateway.scheduling.config import ProfileConfig, RoutingConfig
from eksinfer.gateway.scheduling.data import GATEWAY_KEYS, TOKEN_KEYS, DataKey
from eksinfer.gateway.scheduling.framework import (
    EndpointId,
    EndpointState,
    Filter,
    Picker,
    ReasonHook,
    RoutedHook,
    RoutingRequest,
    SchedulingContext,
    ScoredEndpoint,
    Scorer,
)
from eksinfer.gateway.scheduling.presets import builtin_presets
from eksinfer.gateway.scheduling.registry import PluginDeps, Registry, builtin_registry, consumes, produces


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
    consumes: frozenset[DataKey[Any]] = frozenset()
    produces: frozenset[DataKey[Any]] = frozenset()
    # Found once when the profile is built (a protocol isinstance check costs microseconds per request).
    routed_hooks: tuple[Callable[[RoutingRequest, EndpointState], None], ...] = ()
    reason_hook: Callable[[], str | None] | None = None

    def plugins(self) -> tuple[object, ...]:
        """Every plugin instance, in the order they run."""
        return (*(f for _, f in self.filters), *(ws.scorer for ws in self.scorers), self.picker)

    def with_hooks(self) -> Profile:
        """This profile with the plugins' post-decision hooks collected."""
        hooks = tuple(p.on_routed for p in self.plugins() if isinstance(p, RoutedHook))
        reason = self.picker.reason if isinstance(self.picker, ReasonHook) else None
        return dataclasses.replace(self, routed_hooks=hooks, reason_hook=reason)


def check_contracts(plugins: Sequence[tuple[str, object]]) -> tuple[frozenset[DataKey[Any]], ...]:
    """Each plugin's consumed keys must be supplied by the gateway or produced by an earlier plugin; returns
    (consumed, produced) over the profile. `plugins` are (field, instance) in run order."""
    available: set[DataKey[Any]] = set(GATEWAY_KEYS)
    used: set[DataKey[Any]] = set()
    for field, plugin in plugins:
        missing = consumes(plugin) - available
        if missing:
            names = ", ".join(sorted(k.name for k in missing))
            raise ConfigError(
                f"{getattr(plugin, 'type_name', type(plugin).__name__)} consumes {names}, which neither the "
                "gateway nor an earlier plugin of the profile produces",
                field=field,
            )
        used |= consumes(plugin)
        available |= produces(plugin)
    return frozenset(used), frozenset(available - GATEWAY_KEYS)


def build_profile(
    name: str, config: ProfileConfig, deps: PluginDeps, registry: Registry, *, field: str
) -> Profile:
    """Instantiate every plugin of a profile; unknown types and bad parameters name their field."""
    filters = tuple(
        (
            ref.label,
            cast(
                Filter,
                registry.create("filter", ref.type, ref.parameters, deps, field=f"{field}.filters[{i}].type"),
            ),
        )
        for i, ref in enumerate(config.filters)
    )
    scorers = tuple(
        WeightedScorer(
            ref.label,
            ref.type,
            cast(
                Scorer,
                registry.create("scorer", ref.type, ref.parameters, deps, field=f"{field}.scorers[{i}].type"),
            ),
            ref.weight,
        )
        for i, ref in enumerate(config.scorers)
    )
    picker = cast(
        Picker,
        registry.create(
            "picker", config.picker.type, config.picker.parameters, deps, field=f"{field}.picker.type"
        ),
    )
    used, made = check_contracts(
        [(f"{field}.filters[{i}].type", f) for i, (_, f) in enumerate(filters)]
        + [(f"{field}.scorers[{i}].type", ws.scorer) for i, ws in enumerate(scorers)]
        + [(f"{field}.picker.type", picker)]
    )
    needs = bool(used & TOKEN_KEYS)
    return Profile(name, filters, scorers, picker, config.picker.type, needs, used, made).with_hooks()


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
    """Call `on_routed` on every plugin of the profile that has it (router-side memory, speculative index
    entries)."""
    for hook in profile.routed_hooks:
        hook(request, endpoint)


def decision_reason(profile: Profile, chosen: str, matched: Mapping[str, int], num_candidates: int) -> str:
    """Why this endpoint, in one word, for the decisions-by-reason metric and the debug header: the picker's
    own word when it ignores the scores, else from the predicted cached tokens per candidate."""
    if profile.reason_hook is not None:
        named = profile.reason_hook()
        if named:
            return named
    if num_candidates == 1:
        return "only-candidate"
    best = max(matched.values(), default=0)
    if best <= 0:
        return "cold" if profile.needs_tokens else "least-load"
    return "prefix-hit" if matched.get(chosen, 0) >= best else "load-gate"


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
