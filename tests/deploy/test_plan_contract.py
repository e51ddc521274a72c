"""Render reads what it needs from the plan JSON alone: host memory sizes the pods, no catalog look-up."""

from __future__ import annotations

from eksinfer.deploy.context import make_ctx
from tests.deploy import plans


def test_pod_memory_comes_from_the_plan_not_the_catalog() -> None:
    base = plans.tier2()  # p5.48xlarge: the catalog says 2,048 GiB
    small = base.model_copy(update={"instance": base.instance.model_copy(update={"memory_gib": 512.0})})
    assert make_ctx(base).pod_resources(8)[1] == int(2048 * 0.8)
    assert make_ctx(small).pod_resources(8)[1] == int(512 * 0.8)


def test_a_plan_without_host_memory_uses_four_gib_per_vcpu() -> None:
    base = plans.tier2()
    old = base.model_copy(update={"instance": base.instance.model_copy(update={"memory_gib": None})})
    assert make_ctx(old).pod_resources(8)[1] == int(192 * 4 * 0.8)
