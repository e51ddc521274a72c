"""The `bedrock` pool of the gateway YAML: where Bedrock Runtime is, which model ids answer which OpenAI
model names, and how much of it the gateway may use at once.

    pools:
      bedrock:
        kind: bedrock
        region: us-east-1
        models: {llama-3.3-70b: "us.meta.llama3-3-70b-instruct-v1:0"}   # model id, inference profile or ARN
        assistant_prefill: []      # models that accept a conversation ending with an assistant message
        max_concurrency: 64

Credentials are not configured here: botocore's standard chain finds them (EKS Pod Identity or IRSA in a
cluster, environment variables or a profile elsewhere), so no secret ever sits in the gateway's config.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from eksinfer.catalog.bedrock import MODEL_ID
from eksinfer.strict import StrictModel, config_error

# us-east-1, eu-central-2, us-gov-west-1, ap-southeast-7, ...
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


class BedrockPoolConfig(StrictModel):
    """One Bedrock Runtime pool (one region)."""

    kind: Literal["bedrock"] = Field("bedrock", description="Pool kind; always `bedrock` here.")
    region: str = Field(description="AWS region of Bedrock Runtime, e.g. us-east-1.")
    endpoint_url: str | None = Field(
        None,
        description="Override of the Bedrock Runtime URL; only to point botocore at a local stub "
        "(`python -m eksinfer.sim.bedrock`). Null: the region's public endpoint.",
    )
    models: dict[str, str] = Field(
        min_length=1,
        description="OpenAI model name -> Bedrock model id, inference-profile id or ARN. A model not listed "
        "is not served by this pool.",
    )
    assistant_prefill: list[str] = Field(
        default_factory=list,
        description="Models (names of `models`) that accept a conversation ending with an assistant message "
        "as a prefill to continue (Anthropic's Claude up to 4.5). A stream continued on this tier goes to "
        "these as a prefill; to the others (their Converse answers a ValidationException) as the "
        "conversation plus a user turn asking for the rest (docs/bedrock.md, Continuation).",
    )
    max_concurrency: int = Field(
        64,
        ge=1,
        le=1024,
        description="Bedrock calls in flight at once (streams included, for their whole life); also the "
        "number of worker threads running botocore's blocking calls. Requests beyond it wait up to "
        "queue_timeout_s.",
    )
    queue_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Longest wait for a free slot under max_concurrency; then HTTP 429 (retryable), so a "
        "cascade can move on.",
    )
    connect_timeout_s: float = Field(2.0, gt=0, description="Time to open a connection to Bedrock Runtime.")
    read_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Longest silence on the connection: the time to the answer (Converse) or to the first "
        "event, and between two events (ConverseStream).",
    )
    drop_unsupported_params: bool = Field(
        True,
        description="Sampling hints Converse has no field for (seed, presence/frequency_penalty, logit_bias, "
        "top_k, parallel_tool_calls, ...) are dropped; false refuses them with HTTP 400 naming the field. "
        "Fields that change the answer's shape (n > 1, logprobs) are always refused.",
    )

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not _REGION.match(value):
            raise ValueError(f"{value!r} is not an AWS region name like us-east-1")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @field_validator("models")
    @classmethod
    def _models(cls, value: dict[str, str]) -> dict[str, str]:
        for name, model_id in value.items():
            if not name.strip():
                raise ValueError("a model name is empty")
            if not MODEL_ID.match(model_id):
                raise ValueError(f"{model_id!r} (for {name}) is not a Bedrock model id, profile id or ARN")
        return value

    @field_validator("assistant_prefill")
    @classmethod
    def _prefill_models_are_mapped(cls, value: list[str], info: ValidationInfo) -> list[str]:
        models = info.data.get("models") or {}
        unknown = [name for name in value if name not in models]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not one of this pool's models")
        return value


def parse_bedrock_pool(data: Any, *, prefix: str = "pools.bedrock") -> BedrockPoolConfig:
    """Validates one pool section; errors name the field under `prefix`."""
    try:
        return BedrockPoolConfig.model_validate(data)
    except ValidationError as err:
        raise config_error(err, prefix=prefix) from None
