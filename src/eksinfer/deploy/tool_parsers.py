"""vLLM's tool-call and reasoning parsers per model family, for `render` (added to the engine's args) and
`lint` (a tool-capable model served without them).

Without `--enable-auto-tool-choice --tool-call-parser NAME`, vLLM answers `tool_choice: "auto"` (the
default whenever a request carries `tools`) with a 400, so an agent platform's requests fail; without
`--reasoning-parser NAME` a reasoning model's thinking lands in `content` instead of `reasoning`.

Parser names are vLLM's (`vllm/tool_parsers`, `vllm/reasoning`) as the model makers' and vLLM's recipes
use them:
    Llama 3.1 / 3.2 / 3.3        llama3_json
    Qwen3 (hybrid thinking)      hermes, reasoning qwen3        Qwen3-Coder: qwen3_coder; Qwen2.5: hermes
    DeepSeek-V3                  deepseek_v3                    V3.1: deepseek_v31, reasoning deepseek_v3
    DeepSeek-R1                  deepseek_v3, reasoning deepseek_r1
    Kimi-K2-Instruct             kimi_k2                        K2-Thinking, K2.5: reasoning kimi_k2 too
    GLM-4.5 / 4.6                glm45, reasoning glm45         GLM-4.7, GLM-5: glm47, reasoning glm45
    gpt-oss (harmony format)     openai, reasoning openai_gptoss (vLLM recipes OpenAI/GPT-OSS.md)
The first pattern that matches the lower-cased Hugging Face id (or S3 path) wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Parsers:
    """The flags one family needs; `reasoning` None: the model does not reason in a separate channel."""

    tool: str
    reasoning: str | None = None


_FAMILIES: tuple[tuple[re.Pattern[str], Parsers], ...] = tuple(
    (re.compile(pattern), parsers)
    for pattern, parsers in (
        (r"llama-3\.[123]", Parsers("llama3_json")),
        (r"qwen3-coder", Parsers("qwen3_coder")),
        (r"qwen3", Parsers("hermes", "qwen3")),
        (r"qwen2\.5", Parsers("hermes")),
        (r"deepseek-r1", Parsers("deepseek_v3", "deepseek_r1")),
        (r"deepseek-v3\.1", Parsers("deepseek_v31", "deepseek_v3")),
        (r"deepseek-v3", Parsers("deepseek_v3")),
        (r"kimi-k2-instruct", Parsers("kimi_k2")),
        (r"kimi-k2", Parsers("kimi_k2", "kimi_k2")),
        (r"glm-4\.[56]", Parsers("glm45", "glm45")),
        (r"glm-4\.7|glm-5", Parsers("glm47", "glm45")),
        (r"gpt-oss", Parsers("openai", "openai_gptoss")),
    )
)


def parsers_for(model: str) -> Parsers | None:
    """The parsers for a model id or path; None for a family this table does not know."""
    name = model.lower()
    for pattern, parsers in _FAMILIES:
        if pattern.search(name):
            return parsers
    return None
