"""The plan's last tier: Amazon Bedrock, on by default, as the design recommends for every tier ("cascade
routing with Bedrock fallback: uninterrupted service during GPU failures and Spot interruptions").

The model comes from the catalog's Bedrock map (`catalog/data/bedrock.yaml`, dated and cited): the same
model where Bedrock serves it, else a close one, said so in `why`. `plan --bedrock-model ID` picks another
(any model id, inference-profile id or ARN); `plan --no-bedrock-fallback` turns the tier off. A model with no
mapping gets no fallback, and `why` says how to add one.
"""

from __future__ import annotations

from eksinfer.catalog import get_model, list_models
from eksinfer.catalog.bedrock import BedrockModel, bedrock_model, invoke_id, is_profile
from eksinfer.planner.request import PlanRequest
from eksinfer.planner.schema import PlanFallback


def bedrock_fallback(request: PlanRequest, region: str) -> tuple[PlanFallback | None, str]:
    """(the fallback tier or None, the reason for `why.fallback`)."""
    c, model = request.constraints, request.model
    if not c.bedrock_fallback:
        return None, "off (--no-bedrock-fallback): when every self-hosted pool fails, requests fail"
    if c.bedrock_model is not None:
        chosen = PlanFallback(
            region=region,
            model_id=c.bedrock_model,
            inference_profile=is_profile(c.bedrock_model),
            match="chosen",
        )
        return (
            chosen,
            f"Amazon Bedrock {c.bedrock_model} in {region} (--bedrock-model) takes what the GPUs cannot",
        )
    entry = bedrock_model(model.id) or _by_checkpoint(model.hf_id)
    if entry is None:
        return None, (
            f"none: Amazon Bedrock serves no model we map to {model.id}; "
            "choose one with --bedrock-model ID, or --no-bedrock-fallback to say so"
        )
    model_id = invoke_id(entry, region)
    if model_id is None:
        return None, (
            f"none: {entry.model_id} needs a cross-Region inference profile and we know none for {region}; "
            "pass its id or ARN with --bedrock-model"
        )
    fallback = PlanFallback(
        region=region,
        model_id=model_id,
        inference_profile=model_id != entry.model_id,
        match=entry.match,
        source=entry.source,
        as_of=entry.as_of,
    )
    same = "the same model" if entry.match == "same" else f"a close model ({entry.note})"
    return fallback, (
        f"Amazon Bedrock {model_id} in {region}, {same}, is the last tier: it answers when every "
        f"self-hosted pool fails or sheds (model id checked {entry.as_of}, {entry.source})"
    )


def _by_checkpoint(hf_id: str) -> BedrockModel | None:
    """The map's entry for a catalog model served under another name (`plan --served-name`)."""
    for catalog_id in list_models():
        spec = get_model(catalog_id)
        if hf_id in (spec.hf_id, *(v for _, v in spec.hf_variants)):
            return bedrock_model(catalog_id)
    return None
