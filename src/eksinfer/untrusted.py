"""Reading files a user (or a pull request) hands us, with bounds, so a poisoned one gets a one-line error.

What a plain `yaml.safe_load` / `json.loads` lets through, and the bound each gets here:
- size: a file over `MAX_FILE_BYTES` (16 MiB; rendered manifests and configs are kilobytes) is refused
  before it is read;
- alias expansion ("billion laughs"): nine anchors of ten aliases each load into a few hundred nodes that
  every walk over the data visits 10^9 times; `eksinfer lint` ran 37 s and reached 6.2 GB on one. Documents
  whose expanded tree has more than `MAX_NODES` (1,000,000) values are refused, counting each alias as
  often as it is used (a recursive alias never ends, so it is refused too);
- nesting: PyYAML's composer and `json.loads` recurse once per level and raise `RecursionError` near
  1,000 levels; every walk over the data recurses too. Deeper than `MAX_DEPTH` (200) levels is refused;
- encoding: not UTF-8 is refused.
Errors are `ConfigError`s naming the field (`--config`, `--model-config`, a manifest path) and the file.
The pure-Python loader is used on purpose: libyaml's composer recurses in C, where deep nesting is a crash
rather than a `RecursionError`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from eksinfer.errors import ConfigError

MAX_FILE_BYTES = 16 * 1024**2
MAX_NODES = 1_000_000
MAX_DEPTH = 200


class NotTextError(ConfigError):
    """The file is not UTF-8: a binary, or a mistake rather than an attack."""


def read_text(path: Path, *, field: str | None, max_bytes: int = MAX_FILE_BYTES, what: str = "") -> str:
    """The file's text; ConfigError when it is missing, unreadable, too large or not UTF-8. `what` names the
    kind of file in messages ("dataset ")."""
    name = f"{what}{path}"
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ConfigError(
                f"{name} is {size:,} bytes; files over {max_bytes:,} bytes are refused", field=field
            )
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)  # a file that grew (or a pipe) is still bounded
    except OSError as err:
        raise ConfigError(f"cannot read {name}: {err.strerror or err}", field=field) from None
    if len(data) > max_bytes:
        raise ConfigError(f"{name} is over {max_bytes:,} bytes; refused", field=field)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise NotTextError(f"{name} is not UTF-8 text (byte {err.start})", field=field) from None


def one_line(text: str, limit: int = 200) -> str:
    """The first line of a library's message, shortened: what a one-line CLI error can carry."""
    stripped = text.strip()
    return stripped.splitlines()[0][:limit] if stripped else ""


def _check(node: yaml.Node, where: str, field: str | None) -> None:
    """Walks the composed tree as every consumer will (aliases expanded), within the bounds."""
    stack: list[tuple[yaml.Node, int]] = [(node, 1)]
    seen = 0
    while stack:
        current, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            msg = f"{where} expands to more than {MAX_NODES:,} values (YAML aliases?); refused"
            raise ConfigError(msg, field=field)
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where} is nested more than {MAX_DEPTH} levels deep; refused", field=field)
        if isinstance(current, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in current.value)
        elif isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))


def load_yaml_all(text: str, *, where: str, field: str | None) -> list[Any]:
    """Every document of a YAML stream, within the bounds; `yaml.YAMLError` for YAML that does not parse
    (callers word that themselves), `ConfigError` for a document over the bounds."""
    _check_flow_depth(text, where, field)
    loader = yaml.SafeLoader(text)
    try:
        docs = []
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _check(node, where, field)
            docs.append(loader.construct_document(node))
        return docs
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply; refused", field=field) from None
    finally:
        loader.dispose()


_QUOTED = re.compile(r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\n]|'')*'""")
_BRACKETS = re.compile(r"[\[\]{}]")


def _check_flow_depth(text: str, where: str, field: str | None) -> None:
    """Refuses deeply nested flow collections (`[[[[...`) before PyYAML's scanner sees them: it tracks one
    possible key per open bracket and rescans them for every token, so each level costs more than the last
    (1,000 levels took 1.5 s to reach the recursion limit). Quoted strings are skipped; a few hundred
    unbalanced brackets inside a block scalar would be refused too, which no real manifest has."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    depth = 0
    for match in _BRACKETS.finditer(_QUOTED.sub("", text)):
        depth += 1 if match.group() in "[{" else -1
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where} is nested more than {MAX_DEPTH} levels deep; refused", field=field)
        depth = max(depth, 0)


def load_yaml(text: str, *, where: str, field: str | None) -> Any:
    """The single document of a YAML file (None when empty), within the bounds."""
    docs = load_yaml_all(text, where=where, field=field)
    if len(docs) > 1:
        raise ConfigError(f"{where} holds {len(docs)} YAML documents; expected one", field=field)
    return docs[0] if docs else None


def load_json(text: str, *, where: str, field: str | None) -> Any:
    """A JSON document within the nesting bound; `json.JSONDecodeError` for JSON that does not parse."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply; refused", field=field) from None
    _check_depth(value, where, field)
    return value


def _check_depth(value: Any, where: str, field: str | None) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where} is nested more than {MAX_DEPTH} levels deep; refused", field=field)
        if isinstance(current, dict):
            stack.extend((v, depth + 1) for v in current.values())
        elif isinstance(current, list):
            stack.extend((v, depth + 1) for v in current)
