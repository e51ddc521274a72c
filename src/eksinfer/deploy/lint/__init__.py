"""`eksinfer lint`: known pitfalls of GPU serving on EKS in any manifests (rendered or hand-written).

Each finding names the rule, the file, the object, the field, why it hurts and the fix. Rules live in
`rules_pods` (pod templates), `rules_tools` (what clients can call), `rules_pd` (prefill/decode
disaggregation), `rules_aws` (AWS identity of the Bedrock tier) and `rules_cluster` (across objects); `RULES`
lists them all.
"""

from __future__ import annotations

from pathlib import Path

from eksinfer.deploy.lint import (  # noqa: F401  (registers the rules)
    rules_aws,
    rules_cluster,
    rules_pd,
    rules_pods,
    rules_tools,
)
from eksinfer.deploy.lint.core import RULES, Finding, Rule
from eksinfer.deploy.lint.manifests import Doc, Tree, load

__all__ = ["RULES", "Finding", "Rule", "lint_docs", "lint_path"]


def lint_docs(docs: list[Doc], *, only: set[str] | None = None) -> list[Finding]:
    tree = Tree(docs)
    out: list[Finding] = []
    for r in RULES.values():
        if only is not None and r.id not in only:
            continue
        for doc, field, why, fix in r.check(tree):
            out.append(Finding(r.id, r.severity, doc.file, doc.oid, field, why, fix))
    order = {"error": 0, "warning": 1}
    return sorted(out, key=lambda f: (order[f.severity], f.file, f.object, f.rule, f.field))


def lint_path(path: Path) -> list[Finding]:
    """Lints every YAML/JSON document under `path` (a folder or one file)."""
    return lint_docs(load(path))
