"""Pinned CRD schemas (descriptions stripped, see SOURCES.md), looked up by apiVersion and kind."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

CRD_DIR = Path(__file__).parent / "crds"


@cache
def _index() -> dict[tuple[str, str], Path]:
    out: dict[tuple[str, str], Path] = {}
    for path in sorted(CRD_DIR.glob("*.json")):
        group, kind, version = path.stem.rsplit("_", 2)
        out[(f"{group}/{version}", kind)] = path
    return out


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    """The openAPIV3Schema for (apiVersion, kind), or None when no CRD is vendored for it."""
    path = _index().get((api_version, kind))
    if path is None:
        return None
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    schema: dict[str, Any] = doc["schema"]
    return schema


def known_kinds() -> list[tuple[str, str]]:
    return sorted(_index())
