"""Scorer and picker tables: each built-in plugin against hand-computed values."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from eksinfer.gateway.scheduling.framework import (
    EndpointId,
    EndpointState,
    RoutingRequest,
    SchedulingContext,
    ScoredEndpoint,
)
from eksinfer.gateway.scheduling.registry import PluginDeps, builtin_registry
from eksinfer.kvcache.index import PrefixIndex, chain_keys

CTX = SchedulingContext(now=0.0, preset="test")


def ep(name: str, **kw: Any) -> EndpointState:
    kw.setdefault("stale", False)
    return EndpointState(id=EndpointId(name), url=f"http://{name}", **kw)


def score(type_name: str, endpoints: list[EndpointState], request: RoutingRequest | None = None,
          deps: PluginDeps | None = None, **params: Any) -> dict[str, float]:  # fmt: skip
    plugin = builtin_registry().create("scorer", type_name, params, deps or PluginDeps())
    return {
        k: round(v, 4) for k, v in plugin.score(CTX, request or RoutingRequest("m", "hi"), endpoints).items()
    }


@pytest.mark.parametrize(
    ("waiting", "expected"),
    [
        ([0, 5, 10], [1.0, 0.5, 0.0]),
        ([3, 3], [1.0, 1.0]),  # all equal -> 1
        ([2, 0], [0.0, 1.0]),
    ],
)
def test_queue_scorer(waiting: list[int], expected: list[float]) -> None:
    eps = [ep(f"e{i}", num_waiting=q) for i, q in enumerate(waiting)]
    assert list(score("queue-scorer", eps).values()) == expected


def test_queue_scorer_uses_inflight_when_stale() -> None:
    eps = [
        ep("a", num_waiting=50, stale=True, inflight_requests=1),
        ep("b", num_waiting=3, inflight_requests=0),
    ]
    assert score("queue-scorer", eps) == {"a": 1.0, "b": 0.0}


@pytest.mark.parametrize(
    ("usage", "expected"), [(0.0, 1.0), (0.25, 0.75), (1.0, 0.0), (1.5, 0.0), (None, 0.5)]
)
def test_kv_utilization_scorer(usage: float | None, expected: float) -> None:
    assert score("kv-cache-utilization-scorer", [ep("a", kv_usage=usage)]) == {"a": expected}


@pytest.mark.parametrize(
    ("inflight", "threshold", "expected"),
    [
        ([0, 500, 1000], 1000, [1.0, 0.5, 0.0]),
        ([2000, 3000], 1000, [1.0, 0.0]),  # all past the threshold: min-max keeps the least loaded first
    ],
)
def test_token_load_scorer(inflight: list[int], threshold: int, expected: list[float]) -> None:
    eps = [ep(f"e{i}", inflight_prompt_tokens=t) for i, t in enumerate(inflight)]
    got = score("token-load-scorer", eps, threshold_tokens=threshold, lookahead=False)
    assert list(got.values()) == expected


@pytest.mark.parametrize(
    ("lora", "adapters", "expected"),
    [
        (None, [set(), {"x"}], [1.0, 1.0]),
        ("x", [{"x"}, set(), {"a", "b"}], [1.0, 0.6, 0.0]),
    ],
)
def test_lora_affinity_scorer(lora: str | None, adapters: list[set[str]], expected: list[float]) -> None:
    eps = [ep(f"e{i}", lora_adapters=frozenset(a)) for i, a in enumerate(adapters)]
    got = score("lora-affinity-scorer", eps, RoutingRequest("m", "", lora=lora), max_loras=2)
    assert list(got.values()) == expected


def test_session_affinity_is_stable_and_moves_only_removed_sessions() -> None:
    eps = [ep(f"e{i}") for i in range(4)]
    owners = {}
    for s in range(40):
        got = score("session-affinity-scorer", eps, RoutingRequest("m", "", session_id=f"s{s}"))
        assert sorted(got.values()) == [0.0, 0.0, 0.0, 1.0]
        owners[s] = max(got, key=got.__getitem__)
    assert len(set(owners.values())) == 4  # spread over all endpoints
    remaining = [e for e in eps if e.id != "e0"]
    for s, owner in owners.items():
        got = score("session-affinity-scorer", remaining, RoutingRequest("m", "", session_id=f"s{s}"))
        if owner != "e0":
            assert got[owner] == 1.0
    assert score("session-affinity-scorer", eps) == dict.fromkeys(["e0", "e1", "e2", "e3"], 1.0)


def prefix_deps(holdings: dict[str, int], tokens: list[int], bs: int = 4) -> PluginDeps:
    """An index where endpoint -> the number of leading blocks of `tokens` it holds."""
    index = PrefixIndex()
    keys = chain_keys(tokens, bs)
    for name, n in holdings.items():
        index.insert(name, keys[:n], ttl_s=None)
    return PluginDeps(index=index, block_size=bs)


def test_precise_prefix_scorer() -> None:
    tokens = list(range(18))  # 4 full blocks of 4 + 2 tokens
    deps = prefix_deps({"a": 4, "b": 1}, tokens)
    request = RoutingRequest("m", "", prompt_token_ids=tokens)
    got = score("precise-prefix-cache-scorer", [ep("a"), ep("b"), ep("c")], request, deps)
    assert got == {"a": 1.0, "b": 0.25, "c": 0.0}
    assert request.annotations["precise_match"] == {"a": 16, "b": 4, "c": 0}
    assert score("precise-prefix-cache-scorer", [ep("a")], RoutingRequest("m", "no tokens"), deps) == {
        "a": 0.0
    }


@pytest.mark.parametrize(
    ("holdings", "inflight", "expected"),
    [
        # 32-token prompt (8 blocks); a holds all, b none, no load: cost a = 0, b = 1.5 x 32 = 48
        ({"a": 8}, {}, {"a": 1.0, "b": round(1 / (1 + 48 / 32), 4)}),
        # a holds it but has 64 prompt tokens queued: cost a = 64, b = 48 -> b wins
        ({"a": 8}, {"a": 64}, {"a": round(1 / (1 + 16 / 32), 4), "b": 1.0}),
        # same queue on both: the hit decides
        ({"a": 8}, {"a": 64, "b": 64}, {"a": 1.0, "b": round(1 / (1 + 48 / 32), 4)}),
    ],
)
def test_kv_cost_scorer_trades_hits_against_queue(
    holdings: dict[str, int], inflight: dict[str, int], expected: dict[str, float]
) -> None:
    tokens = list(range(32))
    deps = prefix_deps(holdings, tokens)
    eps = [ep(n, inflight_prompt_tokens=inflight.get(n, 0)) for n in ("a", "b")]
    request = RoutingRequest("m", "", prompt_token_ids=tokens)
    got = score("kv-cost-scorer", eps, request, deps, decode_tokens_per_request=0, prefill_weight=1.5)
    assert got == expected


def test_approx_prefix_scorer_character_blocks() -> None:
    deps = PluginDeps(block_size=4)  # 16-character blocks
    text = "abcdefghijklmnop" * 4
    warm = RoutingRequest("m", text)
    score("approx-prefix-cache-scorer", [ep("a")], warm, deps)
    deps.approx_index.insert("a", warm.annotations["approx_keys"][:2], ttl_s=None)
    got = score("approx-prefix-cache-scorer", [ep("a"), ep("b")], RoutingRequest("m", text), deps)
    assert got == {"a": 0.5, "b": 0.0}


def scored(*totals: float) -> list[ScoredEndpoint]:
    return [ScoredEndpoint(ep(f"e{i}"), t, {}) for i, t in enumerate(totals)]


def pick_counts(type_name: str, totals: tuple[float, ...], n: int = 2000, **params: Any) -> Counter[str]:
    picker = builtin_registry().create("picker", type_name, params, PluginDeps(rng=random.Random(7)))
    cands = scored(*totals)
    return Counter(picker.pick(CTX, cands).endpoint.id for _ in range(n))


@pytest.mark.parametrize(
    ("type_name", "totals", "params", "expect_share"),
    [
        ("max-score-picker", (0.2, 0.9, 0.5), {}, {"e1": 1.0}),
        ("max-score-picker", (0.9, 0.9, 0.1), {}, {"e0": 0.5, "e1": 0.5}),  # random tie-break
        ("weighted-random-picker", (1.0, 3.0), {}, {"e0": 0.25, "e1": 0.75}),
        ("weighted-random-picker", (0.0, 0.0), {}, {"e0": 0.5, "e1": 0.5}),  # all zero -> uniform
        ("random-picker", (0.0, 5.0), {}, {"e0": 0.5, "e1": 0.5}),
        ("round-robin-picker", (0.0, 5.0, 1.0), {}, {"e0": 1 / 3, "e1": 1 / 3, "e2": 1 / 3}),
        ("softmax-picker", (1.0, 0.0), {"temperature": 0.0}, {"e0": 1.0}),
        # p1/p0 = exp(-1/T) with min-max normalisation: T = 1 -> 1/(1+e^-1) = 0.731 for e0
        ("softmax-picker", (1.0, 0.0), {"temperature": 1.0}, {"e0": 0.731, "e1": 0.269}),
    ],
)
def test_pickers(
    type_name: str, totals: tuple[float, ...], params: dict[str, Any], expect_share: dict[str, float]
) -> None:
    counts = pick_counts(type_name, totals, **params)
    total = sum(counts.values())
    for name, share in expect_share.items():
        assert counts[name] / total == pytest.approx(share, abs=0.04)
    assert sum(counts[n] for n in expect_share) == total


def test_round_robin_is_exact_cycle() -> None:
    picker = builtin_registry().create("picker", "round-robin-picker", {}, PluginDeps())
    cands = scored(0, 0, 0)
    assert [picker.pick(CTX, cands).endpoint.id for _ in range(5)] == ["e0", "e1", "e2", "e0", "e1"]
    # An endpoint leaving does not reset the cycle.
    assert picker.pick(CTX, cands[:1] + cands[2:]).endpoint.id == "e2"


@pytest.mark.parametrize(
    ("filter_name", "endpoints", "kept"),
    [
        ("healthy-filter", [ep("a", healthy=False), ep("b")], ["b"]),
        ("healthy-filter", [ep("a", healthy=False)], ["a"]),  # all unhealthy -> keep all
        ("saturation-filter", [ep("a", num_waiting=40), ep("b", num_waiting=1)], ["b"]),
        ("saturation-filter", [ep("a", kv_usage=0.99), ep("b", kv_usage=0.5)], ["b"]),
        ("saturation-filter", [ep("a", num_waiting=40, stale=True), ep("b", num_waiting=50)], ["a"]),
        ("saturation-filter", [ep("a", num_waiting=40), ep("b", num_waiting=50)], ["a", "b"]),
    ],
)
def test_filters(filter_name: str, endpoints: list[EndpointState], kept: list[str]) -> None:
    flt = builtin_registry().create("filter", filter_name, {}, PluginDeps())
    assert [e.id for e in flt.filter(CTX, RoutingRequest("m", ""), endpoints)] == kept


def test_prefix_affinity_remembers_homes_by_family_depth() -> None:
    deps = PluginDeps(block_size=4)
    plugin = builtin_registry().create("scorer", "prefix-affinity-scorer", {"depths": [2, 4]}, deps)
    eps = [ep("a"), ep("b")]
    family = list(range(16))  # 4 blocks
    first = RoutingRequest("m", "", prompt_token_ids=[*family, 100, 101, 102, 103])
    assert plugin.score(CTX, first, eps) == {"a": 0.0, "b": 0.0}  # no home yet
    plugin.on_routed(first, eps[1])
    sibling = RoutingRequest("m", "", prompt_token_ids=[*family, 7, 7, 7, 7])
    assert plugin.score(CTX, sibling, eps) == {"a": 0.0, "b": 1.0}
    # Shares only 2 blocks: the depth-2 home applies.
    cousin = RoutingRequest("m", "", prompt_token_ids=[*family[:8], 9, 9, 9, 9, 9, 9, 9, 9])
    assert plugin.score(CTX, cousin, eps) == {"a": 0.0, "b": 1.0}
    plugin.on_routed(cousin, eps[0])  # the cousin moves the depth-2 home, not the depth-4 one
    assert plugin.score(CTX, sibling, eps) == {"a": 0.0, "b": 1.0}
    assert plugin.score(CTX, RoutingRequest("m", "", prompt_token_ids=family[:8]), eps) == {
        "a": 1.0,
        "b": 0.0,
    }


def test_prefix_affinity_is_bounded() -> None:
    deps = PluginDeps(block_size=4)
    plugin = builtin_registry().create(
        "scorer", "prefix-affinity-scorer", {"depths": [1], "capacity": 10}, deps
    )
    for i in range(50):
        plugin.on_routed(RoutingRequest("m", "", prompt_token_ids=[i] * 4), ep("a"))
    assert len(plugin) == 10
