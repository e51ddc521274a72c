"""Prefill side: blocks a finished prefill keeps for the decode engine that will pull them.

vLLM's NixlConnector (0.32, nixl/pull_scheduler.py `request_finished`, base_worker.py) does not free a
`do_remote_decode` request's blocks when it finishes: they stay allocated under a lease until the decode
engine reports the read done (a NIXL notification), and a request whose lease runs out is reclaimed anyway
(counted in vllm:nixl_num_kv_expired_reqs): the "stranded memory" of a decode side that never came. While
its request waits, the decode side renews the lease with heartbeats (expiry >= now + lease x 2/3).

Time comes from `clock` (monotonic seconds), so tests drive expiry with a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from eksinfer.sim.blocks import BlockPool, BlockTable


@dataclass(slots=True)
class Pinned:
    table: BlockTable
    expires: float
    num_blocks: int


class PinnedBlocks:
    """request id -> pinned blocks and expiry; the pool frees them on release or expiry."""

    def __init__(
        self, pool: BlockPool, *, lease_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.pool = pool
        self.lease_s = lease_s
        self.clock = clock
        self._pinned: dict[str, Pinned] = {}
        self.num_expired = 0  # requests reclaimed because nobody pulled them in time
        self.num_expired_blocks = 0

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._pinned

    def __len__(self) -> int:
        return len(self._pinned)

    @property
    def num_blocks(self) -> int:
        return sum(p.num_blocks for p in self._pinned.values())

    def block_ids(self, request_id: str) -> list[int]:
        entry = self._pinned.get(request_id)
        return [] if entry is None else [b.block_id for b in entry.table.blocks]

    def pin(self, request_id: str, table: BlockTable) -> None:
        """Take over `table` (its blocks stay allocated) until release or lease expiry."""
        self._pinned[request_id] = Pinned(table, self.clock() + self.lease_s, len(table.blocks))

    def release(self, request_id: str) -> bool:
        """The decode side read the blocks: free them. False when they were not pinned (any more)."""
        entry = self._pinned.pop(request_id, None)
        if entry is None:
            return False
        self.pool.free(entry.table)
        return True

    def extend(self, request_ids: list[str], extension_s: float) -> int:
        """A heartbeat: each named lease lasts at least `extension_s` more seconds. Returns how many."""
        until = self.clock() + extension_s
        n = 0
        for rid in request_ids:
            entry = self._pinned.get(rid)
            if entry is not None:
                entry.expires = max(entry.expires, until)
                n += 1
        return n

    def next_expiry(self) -> float | None:
        return min((p.expires for p in self._pinned.values()), default=None)

    def reap(self) -> list[str]:
        """Free every request whose lease has run out; returns their ids."""
        now = self.clock()
        expired = [rid for rid, p in self._pinned.items() if now >= p.expires]
        for rid in expired:
            entry = self._pinned.pop(rid)
            self.num_expired += 1
            self.num_expired_blocks += entry.num_blocks
            self.pool.free(entry.table)
        return expired

    def release_all(self) -> None:
        for rid in list(self._pinned):
            self.release(rid)
