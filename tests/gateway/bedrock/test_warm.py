"""The Bedrock client is built when the gateway starts, on a worker thread, not by the first request that
falls back to Bedrock (importing botocore and loading its service model froze the event loop for about a
second there, under an outage: benchmarks/bench_faults.py)."""

from __future__ import annotations

import pytest

from eksinfer.gateway.bedrock.client import BedrockClient
from eksinfer.gateway.config import parse_config
from eksinfer.gateway.resilience.cascade import Cascade
from eksinfer.gateway.resilience.config import ResilienceConfig
from eksinfer.gateway.resilience.layer import Resilience


@pytest.mark.usefixtures("aws_env")
async def test_managed_clients_are_built_before_traffic() -> None:
    config = parse_config(
        {
            "pools": {
                "eks": {},
                "bedrock": {"kind": "bedrock", "region": "us-east-1", "models": {"m": "us.meta.x-v1:0"}},
            },
            "models": {"m": {"cascade": ["eks", "bedrock"]}},
        }
    )
    res = Resilience(ResilienceConfig(), Cascade(config.pools, config.models))
    assert res.managed == {}
    await res.warm()
    client = res.managed["bedrock"]
    assert isinstance(client, BedrockClient)
    assert client._client is not None  # botocore's client and service model: built, not on first use
    assert res.managed_client("bedrock") is client
    await res.warm()  # idempotent
    assert res.managed["bedrock"] is client
    await res.close()
