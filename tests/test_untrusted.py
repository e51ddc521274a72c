"""Bounds on user files (`eksinfer.untrusted`): what is refused, and that ordinary YAML still loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from eksinfer import untrusted
from eksinfer.errors import ConfigError


def test_ordinary_yaml_with_anchors_and_brackets_in_strings_loads() -> None:
    text = 'base: &b {cpu: 1}\nuse: *b\nnote: "[[[[{{{{"\nlist: [1, [2, [3]]]\nit: it\'s [fine]\n'
    assert untrusted.load_yaml(text, where="f", field=None) == {
        "base": {"cpu": 1},
        "use": {"cpu": 1},
        "note": "[[[[{{{{",
        "list": [1, [2, [3]]],
        "it": "it's [fine]",
    }


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcde", "bcdef", strict=True)
)  # 10^6 values once expanded, from 60 lines


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: " + "[" * 100_000 + "]" * 100_000, "nested more than 200 levels"),
        ("".join("  " * i + f"k{i}:\n" for i in range(300)) + "  " * 300 + "v", "nested"),
        (LAUGHS, "expands to more than 1,000,000 values"),
        ("a: &a [*a]", "refused"),  # never ends: past the depth bound first
    ],
    ids=["flow-depth", "block-depth", "laughs", "recursive-alias"],
)
def test_hostile_yaml_is_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        untrusted.load_yaml(text, where="f.yaml", field="--config")


def test_json_depth_is_bounded() -> None:
    assert untrusted.load_json('{"a": [[1]]}', where="f", field=None) == {"a": [[1]]}
    for text in ("[" * 100_000 + "]" * 100_000, "[" * 300 + "]" * 300):
        with pytest.raises(ConfigError, match="nested"):
            untrusted.load_json(text, where="f.json", field="--model-config")


def test_size_and_encoding(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a" * 101)
    with pytest.raises(ConfigError, match="101 bytes; files over 100 bytes are refused"):
        untrusted.read_text(big, field="--config", max_bytes=100)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"a: \xff")
    with pytest.raises(untrusted.NotTextError, match="not UTF-8 text"):
        untrusted.read_text(binary, field="--config")
    with pytest.raises(ConfigError, match="cannot read"):
        untrusted.read_text(tmp_path / "missing.yaml", field="--config")
