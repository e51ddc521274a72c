"""Which Amazon Bedrock model answers for a catalog model when the self-hosted tiers cannot (data:
`data/bedrock.yaml`, each entry with its source and date), and the ids and IAM resources that follow.

    bedrock_model("llama-3.3-70b") -> BedrockModel | None
    invoke_id(model, "us-east-1") -> "us.meta.llama3-3-70b-instruct-v1:0"     (a cross-Region profile)
    iam_resources("us.meta.llama3-3-70b-instruct-v1:0", "us-east-1") -> profile ARN + foundation-model ARNs

Cross-Region inference profiles route a call to any Region of their geography, so IAM must allow the
foundation model in those Regions too; the policy allows them only through the profile (condition
`bedrock:InferenceProfileArn`), as the Amazon Bedrock user guide's "Prerequisites for inference profiles" and
"Supported Regions and models for inference profiles" describe.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import yaml

# A model id (`meta.llama3-3-70b-instruct-v1:0`), an inference-profile id (`us.meta...`) or an ARN of either.
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:/_-]{0,2047}$")
# Region prefix -> inference-profile geography prefix.
GEOGRAPHIES = {"us": "us", "eu": "eu", "ap": "apac"}
PROFILE_PREFIXES = ("us.", "eu.", "apac.", "us-gov.", "global.", "ca.", "jp.", "au.")


@dataclass(frozen=True, slots=True)
class BedrockModel:
    catalog_id: str
    model_id: str
    profile: bool
    match: Literal["same", "close"]
    note: str
    source: str
    as_of: str


@functools.cache
def _entries() -> dict[str, BedrockModel]:
    text = resources.files("eksinfer.catalog").joinpath("data", "bedrock.yaml").read_text(encoding="utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    return {
        key: BedrockModel(
            catalog_id=key,
            model_id=str(e["model_id"]),
            profile=bool(e["profile"]),
            match="close" if e["match"] == "close" else "same",
            note=str(e.get("note", "")),
            source=str(e["source"]),
            as_of=str(e["as_of"]),
        )
        for key, e in data.items()
    }


def bedrock_model(catalog_id: str) -> BedrockModel | None:
    return _entries().get(catalog_id)


def geography(region: str) -> str | None:
    """The inference-profile prefix for a Region (`us-east-1` -> `us`); None where we know of none."""
    if region.startswith("us-gov-"):
        return "us-gov"
    return GEOGRAPHIES.get(region.split("-", 1)[0])


def invoke_id(model: BedrockModel, region: str) -> str | None:
    """The id the gateway calls from `region`; None when the model needs a profile the Region has none of."""
    if not model.profile:
        return model.model_id
    geo = geography(region)
    return f"{geo}.{model.model_id}" if geo else None


def is_profile(model_id: str) -> bool:
    return model_id.startswith(PROFILE_PREFIXES) or ":inference-profile/" in model_id


def iam_resources(model_id: str, region: str, account: str = "*") -> list[dict[str, Any]]:
    """IAM statements' (Resource, Condition) pairs allowing exactly `model_id` from `region`.

    A foundation model: its ARN in `region`. An inference profile (id or ARN): the profile's ARN, and the
    foundation model in every Region, only when called through that profile. Other ARNs (an application
    inference profile, a provisioned model) are allowed as given."""
    if model_id.startswith("arn:") and ":inference-profile/" not in model_id:
        return [{"Resource": [model_id]}]
    if not is_profile(model_id):
        return [{"Resource": [f"arn:aws:bedrock:{region}::foundation-model/{model_id}"]}]
    profile_arn = model_id if model_id.startswith("arn:") else (
        f"arn:aws:bedrock:{region}:{account}:inference-profile/{model_id}"
    )  # fmt: skip
    profile_id = profile_arn.rpartition(":inference-profile/")[2]
    base = profile_id.split(".", 1)[1]
    return [
        {"Resource": [profile_arn]},
        {
            "Resource": [f"arn:aws:bedrock:*::foundation-model/{base}"],
            "Condition": {"StringLike": {"bedrock:InferenceProfileArn": profile_arn}},
        },
    ]
