"""Logging set-up shared by the commands that run servers (`gateway`, `up`)."""

from __future__ import annotations

import logging

from eksinfer.errors import UsageError


def setup_logging(level: str) -> None:
    """Configure the root logger at `level` (the `--log-level` flag); a bad name is a one-line error."""
    value = getattr(logging, level.upper(), None)
    if not isinstance(value, int):
        raise UsageError(
            f"unknown log level {level!r}; use debug, info, warning or error", field="--log-level"
        )
    logging.basicConfig(level=value, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
