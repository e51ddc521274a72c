"""Seeded JSON values that validate against a JSON schema: the simulator's stand-in for guided decoding.

vLLM constrains sampling with a grammar built from the schema (tool parameters, `response_format`,
`structured_outputs`), so whatever the model writes parses and validates. The simulator has no logits to
mask; it draws a value straight from the schema instead, with a `random.Random` the caller seeds, then
checks it with `jsonschema` (the same validator a client would use). A schema the generator cannot satisfy
(keywords it does not model, such as `pattern` or `not`) gets `SchemaError` naming the problem rather than
output that would fail the client's own validation.

Generation rules: `const`, then `enum`, then `anyOf`/`oneOf` (one branch), `allOf` (merged), local `$ref`
(`#/$defs/...`, `#/definitions/...`); objects carry every `required` property plus each optional one with
probability 1/2; arrays hold `minItems`..min(`maxItems`, minItems + 3) items; strings are 1-3 lowercase
words cut to `minLength`..`maxLength`; numbers stay inside `minimum`/`maximum` (exclusive bounds too).
Nesting is cut at depth 8: deeper optional parts are left out.

`jsonschema` (the sim extra) is imported on first use, so a simulator that is never asked for structured
output starts without it.
"""

from __future__ import annotations

import math
import random
from typing import Any

_WORDS = ("alpha", "bravo", "cedar", "delta", "ember", "fjord", "grove", "harbor", "iris", "juniper")
_MAX_DEPTH = 8


class SchemaError(ValueError):
    """The schema is not a schema, or the simulator cannot produce a value that validates against it."""


def check_schema(schema: Any) -> None:
    """A schema jsonschema accepts (draft 2020-12 rules), else `SchemaError` with its message."""
    if not isinstance(schema, dict | bool):
        raise SchemaError("the JSON schema must be an object")
    import jsonschema  # lazily: see the module docstring

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as err:
        raise SchemaError(f"invalid JSON schema: {err.message}") from None


def generate(schema: dict[str, Any] | bool, rng: random.Random) -> Any:
    """A value valid for `schema`, drawn with `rng`; `SchemaError` when none could be made."""
    check_schema(schema)
    root = schema if isinstance(schema, dict) else {}
    value = _value(root, root, rng, 0)
    import jsonschema  # lazily: see the module docstring

    errors = sorted(jsonschema.Draft202012Validator(root).iter_errors(value), key=str)
    if errors:
        raise SchemaError(f"the simulator cannot satisfy this schema ({errors[0].message})")
    return value


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not isinstance(ref, str):
        return schema
    if not ref.startswith("#/"):
        raise SchemaError(f"only local $ref is supported, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, dict) or part not in node:
            raise SchemaError(f"$ref {ref!r} points nowhere")
        node = node[part]
    if not isinstance(node, dict):
        raise SchemaError(f"$ref {ref!r} is not a schema object")
    rest = {k: v for k, v in schema.items() if k != "$ref"}
    return {**node, **rest}


def _value(schema: dict[str, Any], root: dict[str, Any], rng: random.Random, depth: int) -> Any:
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            base = {k: v for k, v in schema.items() if k != key}
            branch = rng.choice(branches)
            return _value({**base, **branch} if isinstance(branch, dict) else base, root, rng, depth)
    if isinstance(schema.get("allOf"), list):
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, dict):
                merged = _merge(merged, _resolve(part, root))
        return _value(merged, root, rng, depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = rng.choice([k for k in kind if k != "null"] or kind) if kind else None
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    return _typed(str(kind), schema, root, rng, depth)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {**a, **b}
    if isinstance(a.get("properties"), dict) and isinstance(b.get("properties"), dict):
        out["properties"] = {**a["properties"], **b["properties"]}
    if isinstance(a.get("required"), list) and isinstance(b.get("required"), list):
        out["required"] = [*a["required"], *b["required"]]
    return out


def _typed(kind: str, schema: dict[str, Any], root: dict[str, Any], rng: random.Random, depth: int) -> Any:
    if kind == "object":
        return _object(schema, root, rng, depth)
    if kind == "array":
        low = int(schema.get("minItems", 0))
        high = int(schema.get("maxItems", low + 3))
        count = 0 if depth >= _MAX_DEPTH else rng.randint(low, max(low, min(high, low + 3)))
        count = max(count, low)
        raw_items = schema.get("items")
        items: dict[str, Any] = raw_items if isinstance(raw_items, dict) else {}
        return [_value(items, root, rng, depth + 1) for _ in range(count)]
    if kind == "string":
        return _string(schema, rng)
    if kind in ("integer", "number"):
        return _number(kind, schema, rng)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    raise SchemaError(f"unknown JSON schema type {kind!r}")


def _object(schema: dict[str, Any], root: dict[str, Any], rng: random.Random, depth: int) -> dict[str, Any]:
    raw_props = schema.get("properties")
    props: dict[str, Any] = raw_props if isinstance(raw_props, dict) else {}
    required = set(schema.get("required") or ())
    out: dict[str, Any] = {}
    for name, sub in props.items():
        if name in required or (depth < _MAX_DEPTH and rng.random() < 0.5):
            out[name] = _value(sub if isinstance(sub, dict) else {}, root, rng, depth + 1)
    for name in sorted(required - out.keys()):  # required but not described: any string will do
        out[name] = _value({}, root, rng, depth + 1)
    return out


def _string(schema: dict[str, Any], rng: random.Random) -> str:
    fmt = schema.get("format")
    if fmt == "date":
        return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if fmt == "date-time":
        return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z"
    low = int(schema.get("minLength", 0))
    high = int(schema.get("maxLength", max(low, 24)))
    text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
    while len(text) < low:
        text += " " + rng.choice(_WORDS)
    return text[: max(high, 0)]


def _number(kind: str, schema: dict[str, Any], rng: random.Random) -> int | float:
    low = schema.get("minimum", -math.inf)
    high = schema.get("maximum", math.inf)
    if "exclusiveMinimum" in schema:
        low = max(low, schema["exclusiveMinimum"] + (1 if kind == "integer" else 1e-6))
    if "exclusiveMaximum" in schema:
        high = min(high, schema["exclusiveMaximum"] - (1 if kind == "integer" else 1e-6))
    lo = low if math.isfinite(low) else (high - 100 if math.isfinite(high) else 0)
    hi = high if math.isfinite(high) else lo + 100
    if kind == "integer":
        return rng.randint(math.ceil(lo), max(math.ceil(lo), math.floor(hi)))
    return round(rng.uniform(lo, hi), 3) if hi > lo else float(lo)
