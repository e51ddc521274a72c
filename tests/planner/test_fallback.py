"""The plan's Bedrock fallback: on by default with the catalog's model id, off with a flag, chosen with
--bedrock-model, and a clear `why` when there is none."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eksinfer.catalog import get_model
from eksinfer.catalog.bedrock import bedrock_model, iam_resources, invoke_id
from eksinfer.cli.main import build_app
from eksinfer.errors import UsageError
from eksinfer.planner.fallback import bedrock_fallback
from eksinfer.planner.request import Constraints, PlanRequest


def request(model: str = "llama-3.3-70b", **constraints: object) -> PlanRequest:
    return PlanRequest(model=get_model(model), constraints=Constraints(**constraints))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "region", "model_id", "profile", "match"),
    [
        ("llama-3.3-70b", "us-east-1", "us.meta.llama3-3-70b-instruct-v1:0", True, "same"),
        ("llama-3.1-8b", "eu-west-1", "eu.meta.llama3-1-8b-instruct-v1:0", True, "same"),
        ("qwen3-32b", "us-west-2", "qwen.qwen3-32b-v1:0", False, "same"),
        ("deepseek-v3", "us-east-1", "deepseek.v3-v1:0", False, "close"),
        ("gpt-oss-120b", "us-west-2", "openai.gpt-oss-120b-1:0", False, "same"),
    ],
)
def test_default_fallback(model: str, region: str, model_id: str, profile: bool, match: str) -> None:
    fallback, why = bedrock_fallback(request(model), region)
    assert fallback is not None
    assert (fallback.model_id, fallback.inference_profile, fallback.match, fallback.region) == (
        model_id, profile, match, region,
    )  # fmt: skip
    assert fallback.source.startswith("https://docs.aws.amazon.com/bedrock/")
    assert fallback.as_of
    assert model_id in why
    if match == "close":
        assert "close model" in why


def test_every_catalog_entry_is_a_catalog_model_with_a_dated_source() -> None:
    from eksinfer.catalog import list_models

    for catalog_id in list_models():
        entry = bedrock_model(catalog_id)
        if entry is not None:
            assert entry.source.startswith("https://")
            assert len(entry.as_of) == 10


def test_off_chosen_and_none() -> None:
    off, why = bedrock_fallback(request(bedrock_fallback=False), "us-east-1")
    assert off is None
    assert "--no-bedrock-fallback" in why
    chosen, why = bedrock_fallback(request(bedrock_model="global.anthropic.claude-x-v1:0"), "us-east-1")
    assert chosen is not None
    assert (chosen.match, chosen.inference_profile) == ("chosen", True)
    unknown = dataclasses.replace(get_model("qwen3-32b"), id="my-model", hf_id="me/my-model")
    none, why = bedrock_fallback(PlanRequest(model=unknown), "us-east-1")
    assert none is None
    assert "--bedrock-model" in why
    # a profile-only model in a Region whose profile geography we do not know
    none, why = bedrock_fallback(request(), "sa-east-1")
    assert none is None
    assert "inference profile" in why


def test_served_name_still_finds_the_model() -> None:
    renamed = dataclasses.replace(get_model("llama-3.3-70b"), id="chat")
    fallback, _ = bedrock_fallback(PlanRequest(model=renamed), "us-east-1")
    assert fallback is not None
    assert fallback.model_id == "us.meta.llama3-3-70b-instruct-v1:0"


def test_iam_resources_for_arns() -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc"
    assert iam_resources(arn, "us-east-1") == [{"Resource": [arn]}]
    entry = bedrock_model("llama-3.3-70b")
    assert entry is not None
    assert invoke_id(entry, "us-gov-west-1") == "us-gov.meta.llama3-3-70b-instruct-v1:0"


def test_plan_cli_flags(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["plan", "-m", "llama-3.3-70b", "--families", "p5", "--json"]
    plan = json.loads(runner.invoke(build_app(), base).output)
    assert plan["fallback"]["model_id"] == "us.meta.llama3-3-70b-instruct-v1:0"
    assert "fallback" in plan["why"]
    off = json.loads(runner.invoke(build_app(), [*base, "--no-bedrock-fallback"]).output)
    assert off["fallback"] is None
    chosen = json.loads(
        runner.invoke(build_app(), [*base, "--bedrock-model", "meta.llama3-3-70b-instruct-v1:0"]).output
    )
    assert chosen["fallback"]["match"] == "chosen"
    bad = runner.invoke(build_app(), [*base, "--bedrock-model", "not an id"])
    # main.run prints an EksinferError as one line naming its field (tests/cli checks that path)
    assert isinstance(bad.exception, UsageError)
    assert bad.exception.field == "--bedrock-model"
