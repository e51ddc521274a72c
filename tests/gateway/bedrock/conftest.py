"""Bedrock tests run real botocore against the local stub (`eksinfer.sim.bedrock`) through endpoint_url.

AWS itself cannot be reached from the test machine, so the stub stands in for Bedrock Runtime; the
credentials are fake (the stub does not check SigV4) and the chain is fenced in to the environment: no
config files, no instance metadata.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from eksinfer.gateway.bedrock.client import BedrockClient
from eksinfer.gateway.bedrock.config import BedrockPoolConfig
from eksinfer.sim.bedrock import start_stub
from eksinfer.sim.bedrock.stub import RunningStub

ACCESS_KEY = "AKIAEKSINFERTEST0001"
SECRET_KEY = "eksinferTestSecretKey0000000000000000001"  # 40 characters, as AWS secret keys are
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEKSINFER" + "x" * 200
# Where botocore's chain would look besides the environment variables set below.
ENV_CHAIN = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)
MODEL_ID = "us.meta.llama3-3-70b-instruct-v1:0"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_CHAIN:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/eksinfer-test-aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/eksinfer-test-aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
async def stub() -> AsyncIterator[RunningStub]:
    running = await start_stub()
    yield running
    await running.stop()


def pool(url: str, **overrides: object) -> BedrockPoolConfig:
    settings: dict[str, object] = {
        "region": "us-east-1",
        "endpoint_url": url,
        "models": {"llama": MODEL_ID},
        "max_concurrency": 4,
        "read_timeout_s": 10.0,
    }
    return BedrockPoolConfig.model_validate(settings | overrides)


@pytest.fixture
async def client(aws_env: None, stub: RunningStub) -> AsyncIterator[BedrockClient]:
    bedrock = BedrockClient(pool(stub.url))
    yield bedrock
    await bedrock.close()
