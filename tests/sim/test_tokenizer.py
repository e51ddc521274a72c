"""The built-in tokenizer's documented id layout, and a local Hugging Face tokenizer with a chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eksinfer.errors import ConfigError
from eksinfer.tokenize import BUILTIN_VOCAB_SIZE, BuiltinTokenizer, HFTokenizer, load_tokenizer


def test_documented_ids() -> None:
    tok = BuiltinTokenizer()
    # "Hi": no space, upper, 2 letters, tail base-26 value h=7,i=8 -> 7*26+8 = 190
    assert tok.encode("Hi", add_special_tokens=False) == [259 + 1 * 18278 + 26 + 190]
    assert tok.encode(" a", add_special_tokens=False) == [259 + 2 * 18278]
    # " zzz": space, lower, 3 letters -> 259 + 2*18278 + 702 + (25*676 + 25*26 + 25)
    assert tok.encode(" zzz") == [1, 259 + 2 * 18278 + 702 + 17575]
    assert tok.encode("é!", add_special_tokens=False) == [3 + 0xC3, 3 + 0xA9, 3 + ord("!")]
    assert tok.encode("hello", add_special_tokens=False) == tok.encode(
        "hel", add_special_tokens=False
    ) + tok.encode("lo", add_special_tokens=False)
    assert BUILTIN_VOCAB_SIZE == 73371


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_round_trip_any_text(text: str) -> None:
    tok = BuiltinTokenizer()
    ids = tok.encode(text)
    assert ids[0] == 1
    assert all(0 <= i < BUILTIN_VOCAB_SIZE for i in ids)
    assert tok.decode(ids) == text


def test_chat_template_and_content_parts() -> None:
    tok = BuiltinTokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    text = tok.apply_chat_template(messages)
    assert text == "<|system|>\nBe brief.\n<|user|>\na\nb\n<|assistant|>\n"
    assert tok.encode_chat(messages) == tok.encode(text)


_ROLES = st.sampled_from(["system", "user", "assistant", "tool"])
_TEXT = st.text(alphabet=st.sampled_from(list("ab Cd\n\t.é😀<|>")), max_size=40)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_ROLES, _TEXT), max_size=5), st.lists(st.tuples(_ROLES, _TEXT), max_size=5))
def test_chat_encodes_message_by_message_like_the_whole_template(
    first: list[tuple[str, str]], second: list[tuple[str, str]]
) -> None:
    """The per-message cache must give exactly the tokens of the rendered template, cold and warm, and
    after evictions (a tiny cache), since the gateway's prefix keys depend on it."""
    tok = BuiltinTokenizer(message_cache_bytes=1200)  # a few short messages
    for pairs in (first, second, first + second, first):
        messages = [{"role": r, "content": c} for r, c in pairs]
        assert tok.encode_chat(messages) == tok.encode(tok.apply_chat_template(messages))
    assert tok._messages.bytes <= 1200


def _tiny_hf(tmp_path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4, "user": 5, ":": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    template = "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }} {% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "chat_template": template})
    )
    return tmp_path


def test_hf_tokenizer_with_template(tmp_path: Path) -> None:
    tok = load_tokenizer(str(_tiny_hf(tmp_path)))
    assert isinstance(tok, HFTokenizer)
    assert tok.eos_token_id == 2
    assert tok.encode_prompt("hello world") == [3, 4]
    assert tok.apply_chat_template([{"role": "user", "content": "hello"}]) == "<s>user: hello "
    assert tok.decode([3, 4]) == "hello world"


def test_hf_tokenizer_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tokenizer"):
        load_tokenizer(str(tmp_path / "nope"))


def test_hf_tokenizer_with_a_broken_template_is_one_config_line(tmp_path: Path) -> None:
    path = _tiny_hf(tmp_path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }"
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"--tokenizer: .*chat_template does not parse \(template line 1\)"):
        HFTokenizer(path)
