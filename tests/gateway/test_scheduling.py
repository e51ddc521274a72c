"""Registry, config validation, presets and the profile runner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import pytest
import yaml
from pydantic import Field

from eksinfer.errors import ConfigError, UnknownNameError
from eksinfer.gateway.scheduling.config import ProfileConfig, load_routing_config
from eksinfer.gateway.scheduling.framework import (
    EndpointId,
    EndpointState,
    RoutingRequest,
    SchedulingContext,
)
from eksinfer.gateway.scheduling.presets import PRESET_NAMES, builtin_presets
from eksinfer.gateway.scheduling.registry import PluginDeps, PluginParams, builtin_registry
from eksinfer.gateway.scheduling.runner import NoEndpointError, build_profile, build_profiles, run_profile

CTX = SchedulingContext(now=0.0, preset="t")


def eps(n: int) -> list[EndpointState]:
    return [EndpointState(id=EndpointId(f"e{i}"), url=f"http://e{i}") for i in range(n)]


class FixedScorer:
    """A test scorer returning given values (also out of range, to check clamping)."""

    type_name: ClassVar[str] = "fixed-scorer"
    kind: ClassVar[Literal["scorer"]] = "scorer"

    class Params(PluginParams):
        values: dict[str, float] = Field(default_factory=dict)

    def __init__(self, params: Params, deps: PluginDeps) -> None:
        self.values = params.values

    def score(self, ctx: Any, request: Any, endpoints: Sequence[EndpointState]) -> dict[EndpointId, float]:
        return {e.id: self.values.get(e.id, 0.0) for e in endpoints}


class DropAllFilter:
    type_name: ClassVar[str] = "drop-all-filter"
    kind: ClassVar[Literal["filter"]] = "filter"

    class Params(PluginParams):
        pass

    def __init__(self, params: Params, deps: PluginDeps) -> None:
        pass

    def filter(self, ctx: Any, request: Any, endpoints: Sequence[EndpointState]) -> list[EndpointState]:
        return []


def registry_with_test_plugins() -> Any:
    reg = builtin_registry()
    reg.register(FixedScorer)
    reg.register(DropAllFilter)
    return reg


def test_runner_clamps_and_sums_weighted_scores() -> None:
    cfg = ProfileConfig.model_validate(
        {
            "scorers": [
                {
                    "type": "fixed-scorer",
                    "name": "a",
                    "weight": 2,
                    "parameters": {"values": {"e0": 0.6, "e1": 3}},
                },
                {
                    "type": "fixed-scorer",
                    "name": "b",
                    "weight": 1,
                    "parameters": {"values": {"e0": 1, "e1": -2}},
                },
            ]
        }
    )
    profile = build_profile("p", cfg, PluginDeps(), registry_with_test_plugins(), field="p")
    picked, scored = run_profile(profile, CTX, RoutingRequest("m", ""), eps(2))
    totals = {s.endpoint.id: s.total for s in scored}
    assert totals == {
        "e0": pytest.approx(2 * 0.6 + 1),
        "e1": 2 * 1.0 + 0,
    }  # 3 -> 1 and -2 -> 0 after clamping
    assert picked.endpoint.id == "e0"
    assert dict(scored[1].scores) == {"a": 1.0, "b": 0.0}


def test_filter_emptying_the_set_is_no_endpoint() -> None:
    cfg = ProfileConfig.model_validate({"filters": [{"type": "drop-all-filter"}]})
    profile = build_profile("p", cfg, PluginDeps(), registry_with_test_plugins(), field="p")
    with pytest.raises(NoEndpointError, match="drop-all-filter"):
        run_profile(profile, CTX, RoutingRequest("m", ""), eps(2))


def test_unknown_plugin_lists_known_and_names_field() -> None:
    cfg = load_routing_config(
        {"preset": "mine", "profiles": {"mine": {"scorers": [{"type": "queue-scorrer"}]}}}
    )
    with pytest.raises(UnknownNameError) as err:
        build_profiles(cfg, PluginDeps())
    assert "queue-scorer" in str(err.value)
    assert err.value.field == "routing.profiles.mine.scorers[0].type"


def test_unknown_preset_lists_known() -> None:
    with pytest.raises(UnknownNameError, match="kv-aware"):
        build_profiles(load_routing_config({"preset": "kv-awre"}), PluginDeps())


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"bogus": 1}, "routing.bogus"),
        ({"index": {"speculative_ttl_s": -1}}, "routing.index.speculative_ttl_s"),
        ({"tokenizer": {"mode": "magic"}}, "routing.tokenizer.mode"),
        (
            {"profiles": {"x": {"scorers": [{"type": "queue-scorer", "wieght": 2}]}}},
            "routing.profiles.x.scorers.0.wieght",
        ),
    ],
)
def test_config_errors_name_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_routing_config(data)
    assert err.value.field == field


def test_bad_plugin_parameter_names_field() -> None:
    cfg = load_routing_config(
        {
            "preset": "p",
            "profiles": {"p": {"picker": {"type": "softmax-picker", "parameters": {"temperature": -1}}}},
        }
    )
    with pytest.raises(ConfigError) as err:
        build_profiles(cfg, PluginDeps())
    assert err.value.field == "routing.profiles.p.picker.type.parameters.temperature"


def test_yaml_profile_round_trip() -> None:
    text = """
preset: mine
profiles:
  mine:
    filters: [{type: healthy-filter}]
    scorers:
      - {type: precise-prefix-cache-scorer, weight: 3}
      - {type: queue-scorer, weight: 2}
    picker: {type: softmax-picker, parameters: {temperature: 0.1}}
"""
    cfg = load_routing_config(yaml.safe_load(text))
    profiles = build_profiles(cfg, PluginDeps())
    mine = profiles["mine"]
    assert [s.weight for s in mine.scorers] == [3, 2]
    assert mine.needs_tokens
    assert mine.picker_type == "softmax-picker"


def test_every_preset_builds_and_picks() -> None:
    profiles = build_profiles(load_routing_config({}), PluginDeps())
    assert set(PRESET_NAMES) <= set(profiles) == set(builtin_presets())
    for name in PRESET_NAMES:
        picked, scored = run_profile(profiles[name], CTX, RoutingRequest("m", "hello"), eps(3))
        assert picked.endpoint.id in {"e0", "e1", "e2"}
        assert len(scored) == 3
    assert not profiles["round-robin"].needs_tokens
    assert profiles["kv-aware"].needs_tokens


def test_registry_rejects_duplicates() -> None:
    reg = builtin_registry()
    with pytest.raises(ValueError, match="duplicate"):
        reg.register(type("Q", (), {"type_name": "queue-scorer", "kind": "scorer"}))
