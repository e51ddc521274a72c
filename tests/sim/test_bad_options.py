"""Options that would misplace an engine are refused before anything listens."""

from __future__ import annotations

import math

import pytest

from eksinfer.errors import ConfigError, UsageError
from tests.sim.conftest import StartCluster


async def test_replica_ports_past_65535_are_refused(start: StartCluster) -> None:
    # Engine i listens on port + i; before the fix engines 3 and 4 silently took ports 0 (any) and 1.
    with pytest.raises(ConfigError, match=r"--replicas: engine 4 would listen on port 65537"):
        await start(5, port=65533)


async def test_replicas_are_capped_per_process(start: StartCluster) -> None:
    # Before the cap, --replicas 60000 --port 1000 started engine after engine for minutes.
    with pytest.raises(ConfigError, match=r"--replicas: at most 256 engines per process, got 60000"):
        await start(60000, port=1000)


@pytest.mark.parametrize("field", ["stall_s", "slow_token_s"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_fault_durations_must_be_finite(field: str, value: float) -> None:
    # Before the fix these passed validation (NaN < 0 is False); slow_token_s=inf stalled every request.
    from eksinfer.sim.config import FaultOptions

    flag = "--fault-" + field.replace("_", "-")
    with pytest.raises(UsageError, match=f"{flag}: must be a finite number >= 0"):
        FaultOptions(**{field: value}).validate()
