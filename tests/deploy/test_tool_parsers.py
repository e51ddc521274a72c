"""The per-family tool-call and reasoning parsers render adds to vLLM's arguments."""

from __future__ import annotations

import pytest

from eksinfer.catalog import get_model, list_models
from eksinfer.deploy.tool_parsers import Parsers, parsers_for


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", Parsers("llama3_json")),
        ("meta-llama/Llama-3.3-70B-Instruct", Parsers("llama3_json")),
        ("Qwen/Qwen3-32B", Parsers("hermes", "qwen3")),
        ("Qwen/Qwen3-Coder-480B-A35B-Instruct", Parsers("qwen3_coder")),
        ("deepseek-ai/DeepSeek-V3", Parsers("deepseek_v3")),
        ("deepseek-ai/DeepSeek-V3.1", Parsers("deepseek_v31", "deepseek_v3")),
        ("deepseek-ai/DeepSeek-R1-0528", Parsers("deepseek_v3", "deepseek_r1")),
        ("moonshotai/Kimi-K2-Instruct", Parsers("kimi_k2")),
        ("moonshotai/Kimi-K2.5", Parsers("kimi_k2", "kimi_k2")),
        ("zai-org/GLM-4.5-Air", Parsers("glm45", "glm45")),
        ("zai-org/GLM-5", Parsers("glm47", "glm45")),
        ("s3://models/zai-org/GLM-4.7-FP8/", Parsers("glm47", "glm45")),
        ("mistralai/Mistral-7B-v0.1", None),
    ],
)
def test_parsers_per_family(model: str, expected: Parsers | None) -> None:
    assert parsers_for(model) == expected


def test_every_catalog_model_has_parsers() -> None:
    """The catalog lists instruction-tuned models an agent platform calls with tools."""
    missing = [m for m in list_models() if parsers_for(get_model(m).hf_id) is None]
    assert missing == []
