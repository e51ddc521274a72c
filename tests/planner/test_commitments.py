"""Capacity Blocks for ML and reserved (commitment) pricing: from an overrides file only, dated, and rendered
so the nodes launch where the price assumes (no AWS here: the NodePool is checked as rendered)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eksinfer.catalog import get_instance, get_model
from eksinfer.deploy.context import RenderOptions
from eksinfer.deploy.render import build_tree
from eksinfer.errors import ConfigError, UsageError
from eksinfer.planner import Constraints, Plan, PlanRequest, Traffic, make_plan

BOOK = """\
capacity_block_as_of: "2026-11-20"
capacity_block_source: test rates
capacity_block: {p5.48xlarge: 31.5, p4d.24xlarge: 12.25}
reserved_as_of: "2026-11-01"
reserved_term: 1-year EC2 Instance Savings Plan, no upfront
reserved_discount: {p5: 0.25, p4d.24xlarge: 0.4}
"""


@pytest.fixture
def book(tmp_path: Path) -> Path:
    path = tmp_path / "commitments.yaml"
    path.write_text(BOOK)
    return path


def _plan(capacity_type: str, prices: Path | None, **constraints: object) -> Plan:
    c = Constraints(capacity_type=capacity_type, prices=prices, **constraints)  # type: ignore[arg-type]
    request = PlanRequest(
        model=get_model("llama-3.3-70b"), traffic=Traffic(requests_per_s=4.0), constraints=c
    )
    return make_plan(request)


def test_rates_come_from_the_file_on_top_of_the_newest_book(book: Path) -> None:
    p5 = get_instance("p5.48xlarge", prices=book)
    assert p5.price("capacity-block") == 31.5
    assert p5.price("reserved") == pytest.approx(55.04 * 0.75)  # family discount on the book's on-demand
    assert p5.price("on-demand") == 55.04
    p4d = get_instance("p4d.24xlarge", prices=book)
    assert p4d.price("reserved") == pytest.approx(21.957642 * 0.6)  # a type entry beats a family one
    assert get_instance("g6e.xlarge", prices=book).price("capacity-block") is None
    assert get_instance("g6e.xlarge", prices=book).price("reserved") is None
    # a block rate is for the book's own region only
    assert get_instance("p5.48xlarge", prices=book, region="us-west-2").price("capacity-block") is None
    assert p5.capacity_block_date == "2026-11-20"


@pytest.mark.parametrize("line", ["capacity_block: {p5.48xlarge: -3}", "reserved_discount: {p5: 1.2}"])
def test_bad_rates_are_refused(tmp_path: Path, line: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(line + "\n")
    with pytest.raises(ConfigError):
        get_instance("p5.48xlarge", prices=bad)


def test_shipped_books_have_no_commitment_prices_and_say_so() -> None:
    for capacity_type in ("capacity-block", "reserved"):
        with pytest.raises(UsageError, match="--prices FILE") as err:
            _plan(capacity_type, None)
        assert err.value.field == "--capacity-type"


def test_capacity_block_plan_is_priced_dated_and_launches_into_the_reservation(book: Path) -> None:
    plan = _plan("capacity-block", book)
    rate = {"p5.48xlarge": 31.5, "p4d.24xlarge": 12.25}[plan.instance.type]
    assert plan.instance.capacity_type == "capacity-block"
    assert plan.instance.price_per_hour_usd == rate
    assert plan.cost.monthly_usd == pytest.approx(plan.nodes.total_nodes * rate * plan.cost.hours_per_month)
    assert plan.instance.commitment is not None
    assert "2026-11-20" in plan.instance.commitment
    assert plan.nodes.provisioning == "karpenter"
    with pytest.raises(ConfigError) as err:
        build_tree(plan)
    assert err.value.field == "--capacity-reservation"
    tree = build_tree(plan, RenderOptions(capacity_reservations=("cr-0123abcd",)))
    pool = next(o for p, o in tree.objects.items() if p.startswith("nodes/nodepool-"))
    req = {r["key"]: r["values"] for r in pool["spec"]["template"]["spec"]["requirements"]}
    assert req["karpenter.sh/capacity-type"] == ["reserved"]


def test_reserved_plan_is_on_demand_nodes_at_the_discounted_rate(book: Path) -> None:
    plan = _plan("reserved", book, instance_families=("p5",))
    assert plan.instance.price_per_hour_usd == pytest.approx(55.04 * 0.75, abs=1e-4)
    assert plan.instance.commitment is not None
    assert "Savings Plan" in plan.instance.commitment
    assert "25% off on-demand" in plan.why["instance"]
    pool = next(o for p, o in build_tree(plan).objects.items() if p.startswith("nodes/nodepool-"))
    req = {r["key"]: r["values"] for r in pool["spec"]["template"]["spec"]["requirements"]}
    assert req["karpenter.sh/capacity-type"] == ["on-demand"]
