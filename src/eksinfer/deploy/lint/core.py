"""Findings and the rule registry: each rule is one function over the loaded manifests."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Literal

from eksinfer.deploy.lint.manifests import Doc, PodUnit, Tree

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One pitfall: where (file, object, field), why it hurts, how to fix it."""

    rule: str
    severity: Severity
    file: str
    object: str
    field: str
    why: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    severity: Severity
    title: str
    check: Callable[[Tree], Iterable[tuple[Doc, str, str, str]]]  # (doc, field, why, fix)


RULES: dict[str, Rule] = {}


def rule(
    rule_id: str, severity: Severity, title: str
) -> Callable[
    [Callable[[Tree], Iterable[tuple[Doc, str, str, str]]]],
    Callable[[Tree], Iterable[tuple[Doc, str, str, str]]],
]:
    def register(
        fn: Callable[[Tree], Iterable[tuple[Doc, str, str, str]]],
    ) -> Callable[[Tree], Iterable[tuple[Doc, str, str, str]]]:
        if rule_id in RULES:
            raise AssertionError(f"duplicate lint rule {rule_id}")
        RULES[rule_id] = Rule(rule_id, severity, title, fn)
        return fn

    return register


def at(unit: PodUnit, rest: str) -> str:
    """Field path of something inside a pod template."""
    return f"{unit.path}.{rest}" if unit.path else rest
