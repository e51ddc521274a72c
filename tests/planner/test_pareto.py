"""`plan --pareto`: tokens/s per GPU against per user, the front, the SLO line and the chosen plan."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from eksinfer.catalog import get_model
from eksinfer.cli.main import build_app
from eksinfer.planner import Constraints, PlanRequest, Traffic, make_plan
from eksinfer.planner.pareto import pareto, slo_user_speed, write_png


def test_front_is_undominated_and_the_plan_is_marked(tmp_path: Path) -> None:
    request = PlanRequest(
        get_model("llama-3.3-70b"),
        Traffic(requests_per_s=4.0),
        constraints=Constraints(instance_families=("p5",)),
    )
    plan = make_plan(request)
    points = pareto(request, plan)
    front = [p for p in points if p.on_front]
    assert front
    for f in front:
        assert not any(
            p.tokens_per_s_per_gpu > f.tokens_per_s_per_gpu
            and p.tokens_per_s_per_user > f.tokens_per_s_per_user
            for p in points
        )
    [chosen] = [p for p in points if p.chosen]
    assert chosen.meets_slo
    assert chosen.tokens_per_s_per_user >= slo_user_speed(request)
    png = write_png(points, request, tmp_path / "front.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_prints_the_front_and_writes_the_png(tmp_path: Path) -> None:
    png = tmp_path / "out" / "pareto.png"
    result = CliRunner().invoke(
        build_app(), ["plan", "--model", "llama-3.1-8b", "--families", "g6e", "--pareto", str(png)]
    )
    assert result.exit_code == 0, result.output
    assert "Pareto front" in result.output
    assert "<- plan" in result.output
    assert png.exists()
