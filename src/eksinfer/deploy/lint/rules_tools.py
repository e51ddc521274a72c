"""Lint rules on what clients can call: tool calling and reasoning output of the served model."""

from __future__ import annotations

from collections.abc import Iterator

from eksinfer.deploy import vllm_flags
from eksinfer.deploy.lint.core import at, rule
from eksinfer.deploy.lint.manifests import Doc, Tree
from eksinfer.deploy.lint.rules_pods import model_of, serving
from eksinfer.deploy.tool_parsers import parsers_for

Hit = tuple[Doc, str, str, str]


@rule("tools-without-parser", "warning", "tool-capable model served without tool-call or reasoning parsers")
def tools_without_parser(tree: Tree) -> Iterator[Hit]:
    for unit, i, argv in serving(tree):
        model = model_of(argv)
        parsers = parsers_for(model)
        if parsers is None:
            continue
        where = at(unit, f"spec.containers[{i}].args")
        if not vllm_flags.has(argv, "enable-auto-tool-choice") or not vllm_flags.has(
            argv, "tool-call-parser"
        ):
            yield (
                unit.doc,
                where,
                f"{model} can call tools, but without --enable-auto-tool-choice and --tool-call-parser vLLM "
                'answers every request with tools and tool_choice "auto" (the default) with a 400',
                f"add --enable-auto-tool-choice --tool-call-parser {parsers.tool}",
            )
        if parsers.reasoning is not None and not vllm_flags.has(argv, "reasoning-parser"):
            yield (
                unit.doc,
                where,
                f"{model} reasons before it answers; without --reasoning-parser its thinking is returned "
                "as content instead of the separate reasoning field",
                f"add --reasoning-parser {parsers.reasoning}",
            )
