"""Reading and completing vLLM command lines (`--flag value`, `--flag=value`, `-tp 8`, underscores or dashes),
shared by render (to add what a plan leaves out) and lint (to read what a manifest asks for)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

SHORT = {"tp": "tensor-parallel-size", "pp": "pipeline-parallel-size", "dp": "data-parallel-size"}
SHELLS = ("sh", "bash", "/bin/sh", "/bin/bash", "/usr/bin/env")


def _norm(token: str) -> str | None:
    if token.startswith("--"):
        return token[2:].split("=", 1)[0].replace("_", "-")
    if token.startswith("-") and token[1:].split("=", 1)[0] in SHORT:
        return SHORT[token[1:].split("=", 1)[0]]
    return None


def has(args: Sequence[str], flag: str) -> bool:
    return any(_norm(a) == flag for a in args)


def ensure(args: list[str], flag: str, value: str | None = None) -> None:
    """Appends `--flag [value]` unless the flag is already there (the plan's own value wins)."""
    if not has(args, flag):
        args.extend([f"--{flag}"] if value is None else [f"--{flag}", value])


def value(args: Sequence[str], flag: str) -> str | None:
    """The value of the last occurrence of `flag`, "" for a bare switch, None when absent."""
    found: str | None = None
    for i, token in enumerate(args):
        if _norm(token) != flag:
            continue
        if "=" in token:
            found = token.split("=", 1)[1]
        elif i + 1 < len(args) and not args[i + 1].startswith("-"):
            found = args[i + 1]
        else:
            found = ""
    return found


def container_argv(container: Mapping[str, Any]) -> list[str]:
    """command + args as tokens; a `sh -c SCRIPT` is split into the script's words."""
    argv = [str(a) for a in (container.get("command") or [])] + [
        str(a) for a in (container.get("args") or [])
    ]
    if argv and argv[0] in SHELLS and "-c" in argv:
        script = " ".join(argv[argv.index("-c") + 1 :])
        try:
            return shlex.split(script.replace("&&", " ").replace(";", " "))
        except ValueError:
            return script.split()
    return argv


def is_vllm(container: Mapping[str, Any]) -> bool:
    argv = container_argv(container)
    text = " ".join(argv)
    image = str(container.get("image", ""))
    return "vllm" in image or "vllm serve" in text or "vllm.entrypoints" in text
