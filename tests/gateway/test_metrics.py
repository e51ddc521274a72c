"""Gateway metric conventions: every router statistic is declared a counter or a gauge (or deliberately not
exported), counters are exposed as `_total` counters, and generated tokens are read from relayed bytes."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from eksinfer.gateway import router_metrics as rm
from eksinfer.gateway.metrics import PREFIX, GatewayMetrics
from eksinfer.gateway.routing import Router
from eksinfer.gateway.scheduling.config import load_routing_config
from eksinfer.gateway.scheduling.framework import EndpointId, EndpointState
from eksinfer.gateway.usage import StreamTokens, completion_tokens
from eksinfer.kvcache.subscriber import SubscriberStats


def test_every_router_statistic_is_declared() -> None:
    """A statistic added to `Router.stats()` must be typed in router_metrics (or skipped on purpose)."""
    stats = Router(load_routing_config({"tokenizer": {"mode": "approx"}})).stats()
    assert set(stats) - {"index", "subscribers"} == set(rm.SCALARS) | rm.SKIPPED
    assert set(stats["index"]) - {"endpoints"} == set(rm.INDEX) | rm.INDEX_SKIPPED
    assert set(SubscriberStats().as_dict()) == set(rm.SUBSCRIBER) | rm.SUBSCRIBER_SKIPPED


def test_router_statistics_are_typed_counters_and_gauges() -> None:
    sub = SubscriberStats(batches=3, gaps=1, lag_s=0.25, last_seq=9).as_dict()
    stats = {
        "index_blocks": 12,
        "predicted_hit_ratio": 0.5,
        "event_lag_s_max": None,
        "tokenize_failures": 2,
        "route_ms_mean": 0.1,
        "decisions": {"kv-aware/cold": 4},
        "index": {"blocks": 12, "stored_blocks": 40, "cleared": 1, "endpoints": {"e1": 12}},
        "subscribers": {"e1": sub},
    }
    metrics = GatewayMetrics(lambda: [], lambda: stats)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    p = rm.PREFIX
    kinds = {n.removeprefix(p): f.type for n, f in families.items() if n.startswith(p)}
    assert kinds["index_blocks"] == "gauge"
    assert kinds["index_stored_blocks"] == kinds["index_clears"] == kinds["tokenize_failures"] == "counter"
    assert kinds["subscribers_batches"] == kinds["subscribers_gaps"] == "counter"
    assert kinds["subscribers_lag_seconds"] == kinds["subscribers_last_seq"] == "gauge"
    assert kinds["index_endpoint_blocks"] == "gauge"
    samples = {(s.name, s.labels.get("endpoint")): s.value for f in families.values() for s in f.samples}
    assert samples[(p + "index_stored_blocks_total", None)] == 40
    assert samples[(p + "subscribers_gaps_total", "e1")] == 1
    assert samples[(p + "subscribers_lag_seconds", "e1")] == 0.25
    assert samples[(p + "index_endpoint_blocks", "e1")] == 12
    text = metrics.render().decode()
    assert "kv_event_lag_max_seconds" not in text  # None: no sample rather than a made-up 0
    assert "route_ms" not in text  # measured by the gateway itself (scheduling_duration_seconds)
    assert "router_decisions" not in text  # the gateway's own decisions_total counts these
    for family in families.values():  # counters carry `_total` on every sample
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":17,"total_tokens":26}}', 17),
        (b'{"usage": {"completion_tokens" : 3}}', 3),
        (b'{"choices":[{"text":"hi"}]}', None),
    ],
)
def test_completion_tokens(body: bytes, expected: int | None) -> None:
    assert completion_tokens(body) == expected


def test_stream_tokens_prefers_usage_then_counts_events() -> None:
    events = [b'data: {"choices":[{"text":"a"}]}\n\n', b'data: {"choices":[{"text":"b"}]}\n\n']
    plain = StreamTokens()
    for chunk in [*events, b"data: [DONE]\n\n"]:
        plain.feed(chunk)
    assert plain.tokens() == 2
    with_usage = StreamTokens()
    usage = b'data: {"choices":[],"usage":{"completion_tokens":7}}\n\n'
    for chunk in [*events, usage + b"data: [DONE]\n\n"]:
        with_usage.feed(chunk)
    assert with_usage.tokens() == 7  # the engine's own count wins over the event estimate
    chat = StreamTokens()
    role = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    token = b'data: {"choices":[{"index":0,"delta":{"content":" a"}}]}\n\n'
    for chunk in [role, token, token, b"data: [DONE]\n\n"]:
        chat.feed(chunk)
    assert chat.tokens() == 2  # the opening role event carries no token
    coalesced = StreamTokens()
    coalesced.feed(b"".join(events) + b"data: [DONE]\n\n")  # several events in one read
    assert coalesced.tokens() == 2


def test_per_model_series_start_at_zero_once_the_model_is_known() -> None:
    """A counter that first appears at N hides N from rate(); known models get their series at 0."""
    ep = EndpointState(EndpointId("e1"), "http://e1", models=frozenset({"m"}))
    metrics = GatewayMetrics(lambda: [ep], lambda: {})
    text = metrics.render().decode()
    assert 'eksinfer_gateway_generation_tokens_total{model="m"} 0.0' in text
    assert 'eksinfer_gateway_prompt_tokens_total{model="m"} 0.0' in text
    assert 'eksinfer_gateway_scheduling_duration_seconds_count{model="m"} 0.0' in text
    ttft = 'model="m",pool="default",route="/v1/completions"'
    assert f"eksinfer_gateway_time_to_first_token_seconds_count{{{ttft}}} 0.0" in text
    metrics.observe_generated("m", 5)
    assert 'eksinfer_gateway_generation_tokens_total{model="m"} 5.0' in metrics.render().decode()


def test_cascade_tiers_are_described_and_their_pools_start_at_zero() -> None:
    """A managed tier has no endpoint: its per-pool series start at 0 from the cascade, and the info series
    says which pool is which kind, for the dashboard's share answered by Bedrock."""
    ep = EndpointState(EndpointId("e1"), "http://e1", models=frozenset({"m"}), pool="eks")
    metrics = GatewayMetrics(lambda: [ep], lambda: {})
    metrics.describe_cascades({"m": [("eks", "vllm"), ("bedrock", "bedrock")]})
    metrics.observe_ttft("/v1/chat/completions", "m", 0.2, "bedrock")
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    info = {tuple(sorted(s.labels.items())): s.value for s in families[PREFIX + "cascade_tier_info"].samples}
    assert info == {
        (("kind", "vllm"), ("model", "m"), ("pool", "eks"), ("tier", "1")): 1.0,
        (("kind", "bedrock"), ("model", "m"), ("pool", "bedrock"), ("tier", "2")): 1.0,
    }
    counts = {
        (s.labels["pool"], s.labels["route"]): s.value
        for s in families[PREFIX + "time_to_first_token_seconds"].samples
        if s.name.endswith("_count")
    }
    assert counts == {
        ("eks", "/v1/completions"): 0.0,
        ("eks", "/v1/chat/completions"): 0.0,
        ("bedrock", "/v1/completions"): 0.0,
        ("bedrock", "/v1/chat/completions"): 1.0,
    }
