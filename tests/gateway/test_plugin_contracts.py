"""Plugin contracts: declared consumed/produced data keys checked when a profile is built, token ids only
for profiles that consume them, post-decision hooks owned by plugins, the decorator-filled registry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from eksinfer.errors import ConfigError
from eksinfer.gateway.routing import Router
from eksinfer.gateway.scheduling.config import ProfileConfig, load_routing_config
from eksinfer.gateway.scheduling.data import ENDPOINT_METRICS, TOKEN_IDS, DataKey
from eksinfer.gateway.scheduling.framework import (
    EndpointId,
    EndpointState,
    RoutingRequest,
    SchedulingContext,
    ScoredEndpoint,
)
from eksinfer.gateway.scheduling.registry import (
    PluginBase,
    PluginDeps,
    Registry,
    builtin_registry,
    plugin,
)
from eksinfer.gateway.scheduling.runner import build_profile

SHARE: DataKey[dict[str, float]] = DataKey("test-share", "plugin", "a test annotation")


class ShareProducer(PluginBase):
    """Writes SHARE; the consumer below reads it through the key."""

    type_name = "share-producer"
    kind = "filter"
    produces = frozenset({SHARE})

    def filter(
        self, ctx: SchedulingContext, request: RoutingRequest, endpoints: Sequence[EndpointState]
    ) -> list[EndpointState]:
        SHARE.put(request, {ep.id: 0.25 for ep in endpoints})
        return list(endpoints)


class ShareConsumer(PluginBase):
    type_name = "share-consumer"
    kind = "scorer"
    consumes = frozenset({SHARE})

    def score(
        self, ctx: Any, request: RoutingRequest, endpoints: Sequence[EndpointState]
    ) -> dict[Any, float]:
        share = SHARE.get(request)
        assert share is not None
        return {ep.id: share[ep.id] for ep in endpoints}


class ShareScoringProducer(PluginBase):
    type_name = "share-scoring-producer"
    kind = "scorer"
    produces = frozenset({SHARE})

    def score(
        self, ctx: Any, request: RoutingRequest, endpoints: Sequence[EndpointState]
    ) -> dict[Any, float]:
        SHARE.put(request, {ep.id: 0.5 for ep in endpoints})
        return {}


class TokenScorer(PluginBase):
    type_name = "token-scorer"
    kind = "scorer"
    consumes = frozenset({TOKEN_IDS})

    def score(
        self, ctx: Any, request: RoutingRequest, endpoints: Sequence[EndpointState]
    ) -> dict[Any, float]:
        return dict.fromkeys((ep.id for ep in endpoints), 1.0)


class MetricsScorer(TokenScorer):
    type_name = "metrics-scorer"
    consumes = frozenset({ENDPOINT_METRICS})


class NamingPicker(PluginBase):
    """Picks the first candidate, names its own reason and remembers what it was told after the decision."""

    type_name = "naming-picker"
    kind = "picker"

    def __init__(self, params: Any, deps: PluginDeps) -> None:
        super().__init__(params, deps)
        self.routed: list[str] = []

    def pick(self, ctx: SchedulingContext, scored: Sequence[ScoredEndpoint]) -> ScoredEndpoint:
        return scored[0]

    def reason(self) -> str:
        return "named-by-picker"

    def on_routed(self, request: RoutingRequest, endpoint: EndpointState) -> None:
        self.routed.append(endpoint.id)


class NotAScorer(PluginBase):
    type_name = "not-a-scorer"
    kind = "scorer"


def registry() -> Registry:
    reg = builtin_registry()
    for cls in (
        ShareProducer,
        ShareScoringProducer,
        ShareConsumer,
        TokenScorer,
        MetricsScorer,
        NamingPicker,
        NotAScorer,
    ):
        reg.register(cls)
    return reg


def profile(cfg: dict[str, Any]) -> Any:
    return build_profile("p", ProfileConfig.model_validate(cfg), PluginDeps(), registry(), field="p")


def eps(n: int) -> list[EndpointState]:
    return [EndpointState(id=EndpointId(f"e{i}"), url=f"http://e{i}", block_size=16) for i in range(n)]


def test_consuming_a_key_nobody_produces_is_a_config_error_naming_the_plugin() -> None:
    with pytest.raises(ConfigError) as err:
        profile({"scorers": [{"type": "queue-scorer"}, {"type": "share-consumer"}]})
    assert err.value.field == "p.scorers[1].type"
    assert "test-share" in str(err.value)


def test_a_producer_must_run_before_its_consumer() -> None:
    ok = profile({"filters": [{"type": "share-producer"}], "scorers": [{"type": "share-consumer"}]})
    assert SHARE in ok.consumes
    assert SHARE in ok.produces
    profile({"scorers": [{"type": "share-scoring-producer"}, {"type": "share-consumer"}]})
    with pytest.raises(ConfigError) as err:  # scorers run in order: a later one cannot feed an earlier one
        profile({"scorers": [{"type": "share-consumer"}, {"type": "share-scoring-producer"}]})
    assert err.value.field == "p.scorers[0].type"


def test_the_runner_hands_a_produced_annotation_to_its_consumer() -> None:
    from eksinfer.gateway.scheduling.runner import run_profile

    prof = profile({"filters": [{"type": "share-producer"}], "scorers": [{"type": "share-consumer"}]})
    _, scored = run_profile(prof, SchedulingContext(0.0, "p"), RoutingRequest("m", "x"), eps(2))
    assert [s.total for s in scored] == [0.25, 0.25]


def test_only_profiles_that_consume_token_ids_tokenize() -> None:
    assert profile({"scorers": [{"type": "token-scorer"}]}).needs_tokens
    assert not profile({"scorers": [{"type": "metrics-scorer"}]}).needs_tokens


def test_create_rejects_a_class_without_its_kinds_method() -> None:
    with pytest.raises(TypeError, match="not-a-scorer"):
        registry().create("scorer", "not-a-scorer", {}, PluginDeps())


def test_every_builtin_is_registered_by_its_decorator() -> None:
    reg = builtin_registry()
    assert reg.known("filter") == ["healthy-filter", "saturation-filter"]
    assert reg.known("picker") == [
        "max-score-picker",
        "random-picker",
        "round-robin-picker",
        "softmax-picker",
        "weighted-random-picker",
    ]
    assert len(reg.known("scorer")) == 9
    for kind in ("filter", "scorer", "picker"):
        for name in reg.known(kind):  # type: ignore[arg-type]
            cls = reg.get(kind, name)  # type: ignore[arg-type]
            assert cls.type_name == name
            assert cls.kind == kind


def test_decorator_registers_a_new_plugin_for_fresh_registries() -> None:
    import eksinfer.gateway.scheduling.registry as registry_module

    before = list(registry_module._BUILTIN)
    try:

        @plugin("extra-scorer", "scorer", consumes={ENDPOINT_METRICS})
        class ExtraScorer(TokenScorer):
            pass

        assert ExtraScorer.consumes == frozenset({ENDPOINT_METRICS})
        assert "extra-scorer" in builtin_registry().known("scorer")
    finally:
        registry_module._BUILTIN[:] = before


async def test_picker_names_the_reason_and_every_plugin_hears_the_decision() -> None:
    cfg = load_routing_config(
        {
            "preset": "mine",
            "tokenizer": {"mode": "builtin"},
            "profiles": {
                "mine": {"scorers": [{"type": "metrics-scorer"}], "picker": {"type": "naming-picker"}}
            },
        }
    )
    router = Router(cfg, registry=registry())
    decision = await router.route("m", {"prompt": "hello"}, {}, eps(3))
    assert decision.reason == "named-by-picker"
    picker = router.profiles["mine"].picker
    assert isinstance(picker, NamingPicker)
    assert picker.routed == [decision.endpoint.id]
    await router.stop()


async def test_speculative_insert_runs_once_per_request_whatever_the_number_of_prefix_plugins() -> None:
    cfg = load_routing_config(
        {
            "preset": "both",
            "tokenizer": {"mode": "builtin"},
            "profiles": {
                "both": {
                    "scorers": [
                        {"type": "precise-prefix-cache-scorer"},
                        {"type": "kv-cost-scorer"},
                        {"type": "prefix-affinity-scorer"},
                    ]
                }
            },
        }
    )
    router = Router(cfg)
    inserts: list[str] = []
    real_insert = router.index.insert

    def counting_insert(endpoint_id: str, keys: Any, ttl_s: float | None = None) -> None:
        inserts.append(endpoint_id)
        real_insert(endpoint_id, keys, ttl_s=ttl_s)

    router.index.insert = counting_insert  # type: ignore[method-assign]
    decision = await router.route("m", {"prompt": "a long shared prompt " * 40}, {}, eps(2))
    assert inserts == [decision.endpoint.id]
    assert router.index.endpoint_size(decision.endpoint.id) > 0
    await router.stop()


def test_the_router_names_no_plugin_and_no_annotation_by_string() -> None:
    import ast
    from pathlib import Path

    import eksinfer.gateway.routing as routing_pkg
    import eksinfer.gateway.scheduling.runner as runner

    files = [*Path(routing_pkg.__path__[0]).glob("*.py"), Path(runner.__file__)]
    strings = {
        node.value
        for path in files
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    names = set(builtin_registry().known("scorer") + builtin_registry().known("picker"))
    names |= {"precise_match", "approx_match", "approx_keys", "matched_tokens"}
    assert not strings & names
