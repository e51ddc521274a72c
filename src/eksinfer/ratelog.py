"""Warnings that an attacker or a failing engine cannot turn into a log flood.

`RateLimitedLog.warning(key, msg, *args)` logs the first event of each key, then at most one line per key
every `interval_s`, and that line says how many were held back ("(37 more since the last)").
Keys are bounded in number (`max_keys`, oldest forgotten first) so hostile input cannot grow the table.
The clock is injectable for tests.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        *,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._max_keys = max_keys
        self._clock = clock
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key -> (last logged at, held back)

    def warning(self, key: str, msg: str, *args: object) -> bool:
        """Logs at WARNING unless this key logged within the interval; True when a line was written."""
        now = self._clock()
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self._interval_s:
            self._last[key] = (seen[0], seen[1] + 1)
            return False
        held = seen[1] if seen is not None else 0
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        while len(self._last) > self._max_keys:
            self._last.popitem(last=False)
        if held:
            self._logger.warning("%s (%d more since the last)", msg % args, held)
        else:
            self._logger.warning(msg, *args)
        return True
