"""Child processes that stop with their parent.

SIGINT and SIGTERM reach a gateway's workers and `eksinfer up`'s simulator through their parent, which stops
them in order. A parent killed outright (SIGKILL, the OOM killer) sends nothing, and its children would keep
serving on their ports forever; they watch for it instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable

log = logging.getLogger(__name__)

PARENT_ENV = "EKSINFER_EXIT_WITH_PARENT"  # set by a parent to its pid for a child started as a command


async def wait_for_parent_exit(parent: int, every_s: float = 0.5) -> None:
    """Returns once this process's parent is no longer `parent` (it exited and we were re-parented)."""
    while os.getppid() == parent:  # noqa: ASYNC110 - a parent's death is no event a loop can wait on
        await asyncio.sleep(every_s)
    log.warning("parent process %d is gone; stopping", parent)


def parent_from_env() -> int | None:
    """The pid in `EKSINFER_EXIT_WITH_PARENT`, when a parent asked this process to stop with it."""
    value = os.environ.get(PARENT_ENV, "")
    return int(value) if value.isdigit() else None


async def stopped_or_orphaned(
    stop: Awaitable[object], parent: int | None, *, watch: Awaitable[object] | None = None
) -> None:
    """Returns when `stop` completes or, with a `parent` pid, when that parent is gone; cancels the others.
    `watch` is a supervised child's death: when it ends first, its exception (what went wrong) is raised."""
    waits: list[asyncio.Future[object]] = [asyncio.ensure_future(stop)]
    if parent is not None:
        waits.append(asyncio.ensure_future(wait_for_parent_exit(parent)))
    if watch is not None:
        waits.append(asyncio.ensure_future(watch))
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
