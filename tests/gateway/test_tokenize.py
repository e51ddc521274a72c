"""Tokenization modes: local HF tokenizer + chat template, the engine's /tokenize, the simulator's builtin."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from eksinfer.errors import ConfigError
from eksinfer.gateway.tokenize import (
    ApproxTokenizer,
    BuiltinPromptTokenizer,
    EngineTokenizer,
    HfPromptTokenizer,
    prompt_text,
    prompt_token_ids,
)
from eksinfer.gateway.upstream import UpstreamPool
from eksinfer.tokenize import BuiltinTokenizer as SimBuiltin
from tests.local_http import serve
from tests.waiting import DEADLINE_S

pytestmark = pytest.mark.timeout(30)
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny word-level tokenizer built locally (no downloads) with a BOS post-processor and a template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["<unk>", "<s>", "</s>", "be", "brief", "hello", "there", "[", "]", "system", "user", "assistant"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.add_special_tokens(["<s>", "</s>"])
    path = tmp_path_factory.mktemp("tok")
    tok.save(str(path / "tokenizer.json"))
    config = {"bos_token": {"content": "<s>"}, "eos_token": "</s>", "chat_template": TEMPLATE}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def test_hf_completion_adds_bos(hf_dir: Path) -> None:
    tok = HfPromptTokenizer(str(hf_dir)).load()
    assert tok.encode_body({"prompt": "hello there"}) == [1, 5, 6]


def test_hf_chat_renders_template_without_double_bos(hf_dir: Path) -> None:
    tok = HfPromptTokenizer(str(hf_dir)).load()
    ids = tok.encode_body({"messages": MESSAGES})
    # <s> [ system ] be brief [ user ] hello there [ assistant ]
    assert ids == [1, 7, 9, 8, 3, 4, 7, 10, 8, 5, 6, 7, 11, 8]
    no_gen = tok.encode_body({"messages": MESSAGES, "add_generation_prompt": False})
    assert no_gen == ids[:-3]


def test_hf_matches_the_simulator_hf_tokenizer(hf_dir: Path) -> None:
    from eksinfer.tokenize import HFTokenizer as SimHF

    sim = SimHF(hf_dir)
    ours = HfPromptTokenizer(str(hf_dir)).load()
    assert ours.encode_body({"messages": MESSAGES}) == sim.encode_chat(MESSAGES)
    assert ours.encode_body({"prompt": "be brief"}) == sim.encode_prompt("be brief")


def test_hf_missing_dir_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"routing\.tokenizer\.path"):
        HfPromptTokenizer(str(tmp_path)).load()


def test_builtin_matches_the_simulator() -> None:
    sim = SimBuiltin()
    ours = BuiltinPromptTokenizer()
    assert ours.encode_body({"messages": MESSAGES}) == sim.encode_chat(MESSAGES)
    parts = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}],
        }
    ]
    assert ours.encode_body({"messages": parts}) == sim.encode_chat(parts)
    assert sim.decode(sim.encode_chat(parts)) == "<|user|>\na\nb\n<|assistant|>\n"
    assert ours.encode_body({"prompt": "hello there"}) == sim.encode_prompt("hello there")


@pytest.mark.parametrize(
    ("body", "ids", "text"),
    [
        ({"prompt": [5, 6, 7]}, [5, 6, 7], ""),
        ({"prompt": [[5, 6]]}, [5, 6], ""),
        ({"prompt": ["abc", "def"]}, None, "abc"),
        ({"prompt": "abc"}, None, "abc"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, None, "user\nhi"),
    ],
)
def test_prompt_shapes(body: dict[str, Any], ids: list[int] | None, text: str) -> None:
    assert prompt_token_ids(body) == ids
    assert prompt_text(body) == text
    assert ApproxTokenizer().encode_body(body) == ids


@pytest.fixture
async def tokenize_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def tokenize(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        if body.get("prompt") == "fail":
            return web.json_response({"error": "bad"}, status=400)
        return web.json_response(
            {"count": 3, "max_model_len": 2048, "tokens": [285, 379, 536], "token_strs": None}
        )

    app = web.Application()
    app.router.add_post("/tokenize", tokenize)
    runner, url = await serve(app)
    yield url, seen
    await runner.cleanup()


async def test_engine_tokenize(tokenize_server: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = tokenize_server
    pool = UpstreamPool(connect_timeout_s=DEADLINE_S)
    tok = EngineTokenizer(lambda: pool, timeout_s=DEADLINE_S)  # a healthy /tokenize never comes close
    assert await tok.encode_remote({"messages": MESSAGES}, "m", url) == [285, 379, 536]
    assert seen[-1] == {"model": "m", "messages": MESSAGES, "add_generation_prompt": True}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    kwargs = {"enable_thinking": False}
    await tok.encode_remote({"messages": MESSAGES, "tools": tools, "chat_template_kwargs": kwargs}, "m", url)
    assert seen[-1]["tools"] == tools  # the engine renders the template with them, as for the chat request
    assert seen[-1]["chat_template_kwargs"] == kwargs
    assert await tok.encode_remote({"prompt": "x"}, "m", url) == [285, 379, 536]
    assert seen[-1] == {"model": "m", "prompt": "x"}
    assert pool.idle_connections == 1  # one keep-alive connection served both
    assert await tok.encode_remote({"prompt": "fail"}, "m", url) is None
    assert await tok.encode_remote({"prompt": "x"}, "m", "http://127.0.0.1:9") is None
    assert tok.failures == 2
    await pool.close()


def test_the_gateway_does_not_import_the_simulator() -> None:
    """The gateway and the simulator share `eksinfer.tokenize`; the gateway never reaches into `sim/`."""
    import ast

    import eksinfer.gateway

    root = Path(eksinfer.gateway.__file__).parent
    found = []
    for file in root.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            found += [f"{file.name}: {n}" for n in names if n.startswith("eksinfer.sim")]
    assert found == []
