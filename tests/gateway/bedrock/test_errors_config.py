"""AWS error codes -> status and retry class; redaction; the pool config's validation."""

from __future__ import annotations

import pytest

from eksinfer.errors import ConfigError, UpstreamError
from eksinfer.gateway.bedrock.config import parse_bedrock_pool
from eksinfer.gateway.bedrock.errors import BedrockError, from_aws, redact


@pytest.mark.parametrize(
    ("code", "aws_status", "status", "retryable", "ours"),
    [
        ("ThrottlingException", 429, 429, True, "bedrock_throttling"),
        ("ServiceUnavailableException", 503, 503, True, "bedrock_service_unavailable"),
        ("ModelNotReadyException", 429, 503, True, "bedrock_model_not_ready"),
        ("ModelTimeoutException", 408, 504, True, "bedrock_model_timeout"),
        ("InternalServerException", 500, 502, True, "bedrock_internal_server"),
        ("modelStreamErrorException", 200, 502, True, "bedrock_model_stream_error"),
        ("throttlingException", 200, 429, True, "bedrock_throttling"),  # the in-stream spelling
        ("ModelErrorException", 424, 502, False, "bedrock_model_error"),
        ("ValidationException", 400, 400, False, "bedrock_validation"),
        ("AccessDeniedException", 403, 502, False, "bedrock_access_denied"),
        ("ResourceNotFoundException", 404, 502, False, "bedrock_resource_not_found"),
        ("UnrecognizedClientException", 403, 502, False, "bedrock_unrecognized_client"),
        ("SomethingNewException", 500, 502, True, "bedrock_something_new"),
        ("SomethingNewException", 429, 429, True, "bedrock_something_new"),
    ],
)
def test_error_classes(code: str, aws_status: int, status: int, retryable: bool, ours: str) -> None:
    err = from_aws(code, "msg", aws_status)
    assert isinstance(err, BedrockError)
    assert isinstance(err, UpstreamError)
    assert (err.status, err.retryable, err.code) == (status, retryable, ours)
    assert code in str(err)


def test_redact_removes_given_secrets_and_credential_shapes() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    message = f"sig mismatch for ASIAIOSFODNN7EXAMPLE with {secret} and token abc:short"
    out = redact(message, ["abc:short", None])
    assert "ASIAIOSFODNN7EXAMPLE" not in out
    assert secret not in out
    assert "abc:short" not in out
    assert out.startswith("sig mismatch for [redacted]")
    assert len(redact("y" * 1000 + " z")) <= 300


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"region": "Virginia", "models": {"m": "x"}}, "pools.bedrock.region"),
        ({"region": "us-east-1", "models": {}}, "pools.bedrock.models"),
        ({"region": "us-east-1", "models": {"m": "has space"}}, "pools.bedrock.models"),
        (
            {"region": "us-east-1", "models": {"m": "x"}, "endpoint_url": "ftp://x"},
            "pools.bedrock.endpoint_url",
        ),
        (
            {"region": "us-east-1", "models": {"m": "x"}, "max_concurrency": 0},
            "pools.bedrock.max_concurrency",
        ),
        ({"region": "us-east-1", "models": {"m": "x"}, "retries": 3}, "pools.bedrock.retries"),
        ({"region": "us-east-1", "models": {"m": "x"}, "kind": "vllm"}, "pools.bedrock.kind"),
    ],
)
def test_config_errors_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_bedrock_pool(data)
    assert err.value.field == field


def test_config_accepts_ids_profiles_and_arns() -> None:
    config = parse_bedrock_pool(
        {
            "kind": "bedrock",
            "region": "us-gov-west-1",
            "endpoint_url": "http://127.0.0.1:9/",
            "models": {
                "a": "meta.llama3-3-70b-instruct-v1:0",
                "b": "us.meta.llama3-3-70b-instruct-v1:0",
                "c": "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-3-70b-v1:0",
            },
        }
    )
    assert config.endpoint_url == "http://127.0.0.1:9"
    assert config.max_concurrency == 64
