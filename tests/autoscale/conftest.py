"""A plan made by the planner (not a stored file, so schema changes cannot strand it) for the fleet tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import looptime
import pytest

from eksinfer.catalog import get_model
from eksinfer.planner import make_plan
from eksinfer.planner.request import Constraints, PlanRequest, Traffic
from eksinfer.planner.schema import Plan


@pytest.fixture(scope="session")
def plan_70b() -> Plan:
    """Llama-3.3-70B on g6e.12xlarge (4 x L40S, TP 4) for 4 requests/s: about 1 request/s per replica."""
    request = PlanRequest(
        get_model("llama-3.3-70b"),
        Traffic(requests_per_s=4.0),
        constraints=Constraints(instance_families=("g6e",)),
    )
    return make_plan(request)


@pytest.fixture(scope="session")
def plan_8b() -> Plan:
    return make_plan(PlanRequest(get_model("llama-3.1-8b"), Traffic(requests_per_s=20.0)))


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests marked `virtual_time` run on a looptime loop (as in tests/bench): the HTTP simulator's steps
    sleep in virtual time, so its latencies are exact and comparable with the fleet simulation's."""
    if item.get_closest_marker("virtual_time"):
        return {"virtual-time": looptime.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
