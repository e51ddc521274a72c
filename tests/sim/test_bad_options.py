"""Options that would misplace an engine are refused before anything listens."""

from __future__ import annotations

import pytest

from eksinfer.errors import ConfigError
from tests.sim.conftest import StartCluster


async def test_replica_ports_past_65535_are_refused(start: StartCluster) -> None:
    # Engine i listens on port + i; before the fix engines 3 and 4 silently took ports 0 (any) and 1.
    with pytest.raises(ConfigError, match=r"--replicas: engine 4 would listen on port 65537"):
        await start(5, port=65533)
