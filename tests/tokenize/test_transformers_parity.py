"""The shared tokenizer renders chats as vLLM does with transformers: the same conversations through
`eksinfer.tokenize` (the simulator's and the gateway's tokenizer) and through transformers'
`apply_chat_template` give the same token ids.

No model is downloaded: each tokenizer is a small byte-level BPE trained here on a few sentences, with the
special tokens of the model family added, and the templates under `templates/` (see its README) follow those
families' prompt formats. vLLM flattens list content to newline-joined text for templates that do not loop
over content ("string" format) before it calls transformers; the reference below does the same, so this
compares what vLLM would tokenize.
"""

from __future__ import annotations

import copy
import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from eksinfer.gateway.tokenize import HfPromptTokenizer
from eksinfer.tokenize import HFTokenizer, message_text
from eksinfer.tokenize.chat import content_format

transformers = pytest.importorskip("transformers", reason="transformers is in the test extras")
pytestmark = pytest.mark.timeout(60)

TEMPLATES = Path(__file__).parent / "templates"
CORPUS = [
    "You are a helpful assistant. Answer briefly.",
    "What is the weather in Paris today? It is sunny and 21 degrees.",
    "get_weather city unit celsius fahrenheit",
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    "Cutting Knowledge Date: December 2023 Today Date",
    "Describe the picture. A cat on a mat. Think step by step.",
]
FAMILIES: dict[str, dict[str, Any]] = {
    "llama3": {
        "specials": [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|eom_id|>",
            "<|python_tag|>",
        ],
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
    },
    "qwen3": {
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "added": [
            "<tool_call>",
            "</tool_call>",
            "<tool_response>",
            "</tool_response>",
            "<think>",
            "</think>",
        ],
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
    },
    "deepseek_v3": {
        "specials": [
            "<｜begin▁of▁sentence｜>",
            "<｜end▁of▁sentence｜>",
            "<｜User｜>",
            "<｜Assistant｜>",
            "<｜tool▁calls▁begin｜>",
            "<｜tool▁calls▁end｜>",
            "<｜tool▁call▁begin｜>",
            "<｜tool▁call▁end｜>",
            "<｜tool▁sep｜>",
            "<｜tool▁outputs▁begin｜>",
            "<｜tool▁outputs▁end｜>",
            "<｜tool▁output▁begin｜>",
            "<｜tool▁output▁end｜>",
        ],
        # the AddedToken object form, as DeepSeek V3's own tokenizer_config.json stores them
        "bos_token": {"__type": "AddedToken", "content": "<｜begin▁of▁sentence｜>", "special": True},
        "eos_token": {"__type": "AddedToken", "content": "<｜end▁of▁sentence｜>", "special": True},
    },
    "parts": {
        "specials": [
            "<|begin_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|image|>",
        ],
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
    },
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city (°C).",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city"],
            },
        },
    }
]
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
PARTS = [{"type": "text", "text": "Describe the picture."}, {"type": "image_url", "image_url": {"url": "x"}}]
PARTS += [{"type": "text", "text": "Think step by step."}]
CHATS: dict[str, list[dict[str, Any]]] = {
    "plain": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the weather in Paris today?"},
    ],
    "multi-turn": [
        {"role": "user", "content": "Answer briefly."},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "And tomorrow? "},
    ],
    "tool-round-trip": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the weather in Paris today?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny and 21 degrees"},
    ],
    "content-parts": [{"role": "user", "content": PARTS}],
}
CASES = [
    ("llama3", "plain", None, None),
    ("llama3", "multi-turn", None, None),
    ("llama3", "tool-round-trip", TOOLS, None),
    ("llama3", "content-parts", None, None),
    ("qwen3", "plain", None, None),
    ("qwen3", "tool-round-trip", TOOLS, None),
    ("qwen3", "multi-turn", TOOLS, {"enable_thinking": False}),
    ("qwen3", "content-parts", None, None),
    ("deepseek_v3", "plain", None, None),
    ("deepseek_v3", "tool-round-trip", TOOLS, None),
    ("deepseek_v3", "content-parts", None, None),
    ("parts", "content-parts", None, None),
    ("parts", "multi-turn", None, None),
]


def _build(root: Path, family: str) -> Path:
    """A byte-level BPE tokenizer for `family`, trained on CORPUS, saved as a Hugging Face directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    spec = FAMILIES[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=spec["specials"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens(spec.get("added", []))
    path = root / family
    path.mkdir()
    tok.save(str(path / "tokenizer.json"))
    config = {k: v for k, v in spec.items() if k.endswith("_token")}
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = (TEMPLATES / f"{family}.jinja").read_text()
    (path / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    return path


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {family: _build(root, family) for family in FAMILIES}


def _reference(path: Path, messages: list[dict[str, Any]], tools: Any, kwargs: Any) -> list[int]:
    """transformers' ids for what vLLM passes it (list content flattened for string-format templates)."""
    ref = transformers.AutoTokenizer.from_pretrained(str(path))
    if content_format(ref.chat_template) == "string":
        messages = [
            {**m, "content": message_text(m["content"])} if isinstance(m.get("content"), list) else m
            for m in messages
        ]
    out = ref.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=True, **(kwargs or {})
    )
    ids = out["input_ids"] if hasattr(out, "keys") else out
    return [int(i) for i in ids]


def _same_day(render: Any) -> Any:
    """Templates that print today's date: render again if midnight passed during the comparison."""
    for _ in range(3):
        before = datetime.date.today()
        result = render()
        if datetime.date.today() == before:
            return result
    raise AssertionError("the date kept changing")


@pytest.mark.parametrize(("family", "chat", "tools", "kwargs"), CASES)
def test_gateway_ids_equal_transformers(
    tokenizer_dirs: dict[str, Path], family: str, chat: str, tools: Any, kwargs: Any
) -> None:
    messages = CHATS[chat]
    body: dict[str, Any] = {"messages": copy.deepcopy(messages)}
    if tools is not None:
        body["tools"] = tools
    if kwargs is not None:
        body["chat_template_kwargs"] = kwargs
    gateway = HfPromptTokenizer(str(tokenizer_dirs[family])).load()

    def both() -> tuple[list[int] | None, list[int]]:
        return gateway.encode_body(body), _reference(tokenizer_dirs[family], messages, tools, kwargs)

    ours, expected = _same_day(both)
    assert ours == expected
    assert body["messages"] == messages  # rendering does not rewrite the request


@pytest.mark.parametrize(("family", "chat"), [(f, c) for f, c, tools, _ in CASES if tools is None])
def test_simulator_ids_equal_transformers(tokenizer_dirs: dict[str, Path], family: str, chat: str) -> None:
    engine = HFTokenizer(tokenizer_dirs[family])
    messages = CHATS[chat]
    ours, expected = _same_day(
        lambda: (engine.encode_chat(messages), _reference(tokenizer_dirs[family], messages, None, None))
    )
    assert ours == expected


def test_content_format_detection() -> None:
    assert content_format((TEMPLATES / "parts.jinja").read_text()) == "openai"
    for family in ("llama3", "qwen3", "deepseek_v3"):
        assert content_format((TEMPLATES / f"{family}.jinja").read_text()) == "string"


def test_the_date_comes_from_strftime_now(tokenizer_dirs: dict[str, Path]) -> None:
    engine = HFTokenizer(tokenizer_dirs["llama3"])
    text = _same_day(lambda: (engine.apply_chat_template(CHATS["plain"]), datetime.date.today()))
    assert f"Today Date: {text[1].strftime('%d %b %Y')}\n" in text[0]


@pytest.mark.parametrize(("family", "chat", "tools", "kwargs"), [c for c in CASES if c[2] is not None])
def test_simulator_chat_requests_with_tools_tokenize_as_transformers_and_the_gateway(
    tokenizer_dirs: dict[str, Path], family: str, chat: str, tools: Any, kwargs: Any
) -> None:
    """The simulator's chat parser hands the request's tools (and chat_template_kwargs) to the template, so a
    tool request's prompt ids are the gateway's and transformers'."""
    from eksinfer.sim.protocol import ModelContext, parse_chat

    messages = CHATS[chat]
    body: dict[str, Any] = {"model": "m", "messages": copy.deepcopy(messages), "tools": tools}
    if kwargs is not None:
        body["chat_template_kwargs"] = kwargs
    ctx = ModelContext(
        names=("m",),
        lora_names=(),
        max_model_len=8192,
        tokenizer=HFTokenizer(tokenizer_dirs[family]),
        enable_auto_tool_choice=True,
    )
    gateway = HfPromptTokenizer(str(tokenizer_dirs[family])).load()

    def all_three() -> tuple[list[int], list[int] | None, list[int]]:
        sim_ids = list(parse_chat(copy.deepcopy(body), ctx).prompt_ids)
        return sim_ids, gateway.encode_body(body), _reference(tokenizer_dirs[family], messages, tools, kwargs)

    sim_ids, gateway_ids, expected = _same_day(all_three)
    assert sim_ids == expected
    assert gateway_ids == expected
    if "tools" in (TEMPLATES / f"{family}.jinja").read_text():  # DeepSeek V3's format has no tools section
        assert sim_ids != ctx.tokenizer.encode_chat(messages, extra=kwargs)  # the tools are in the prompt
