"""`eksinfer autoscale PLAN.json`: what-if of scaling policies over a day of traffic (library:
eksinfer.autoscale.whatif)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from eksinfer.errors import ConfigError

GENERATORS = ("diurnal", "bursty")


def _table(rows: list[dict[str, object]]) -> str:
    heads = list(rows[0])
    cells = [[str(r[h]) for h in heads] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    line = "  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, *body])


def register(app: typer.Typer) -> None:
    @app.command("autoscale")
    def autoscale(
        plan_file: Path = typer.Argument(
            ..., metavar="PLAN.json", help="Plan written by `eksinfer plan --json`."
        ),
        trace_file: Path | None = typer.Option(
            None,
            "--trace",
            help="Trace: JSONL (arrival_s, input_tokens, output_tokens[, prefix_group]) or an "
            "Azure LLM inference CSV (TIMESTAMP, ContextTokens, GeneratedTokens).",
        ),
        generate: str | None = typer.Option(None, "--generate", help="No trace: generate diurnal or bursty."),
        requests: int = typer.Option(200_000, "--requests", help="Generated: requests over the duration."),
        duration_h: float = typer.Option(24.0, "--duration-h", help="Generated: hours of traffic."),
        prefix_share: float = typer.Option(
            0.5, "--prefix-share", help="Generated: share with a shared prefix."
        ),
        seed: int = typer.Option(0, "--seed", help="Generated: random seed."),
        policy: list[str] | None = typer.Option(
            None,
            "--policy",
            help="Policy to simulate (repeatable): static[:N], keda-queue[:T], keda-running[:T], "
            "keda-kv[:T], keda-ttft[:T], keda-render, slo-predictive[:U]. Default: all but keda-running.",
        ),
        output: Path | None = typer.Option(
            None, "--output", "-o", help="Folder for summary.json, autoscale.png, recommendation.json."
        ),
        target: float = typer.Option(
            0.99,
            "--target-attainment",
            help="Share of requests within the SLOs the recommendation must reach.",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Simulate scaling policies over a day of traffic: SLO attainment, GPU-hours, a recommendation."""
        from eksinfer.autoscale import trace as traces
        from eksinfer.autoscale.whatif import DEFAULT_POLICIES, plot, recommend, run_whatif
        from eksinfer.cli.render import load_plan
        from eksinfer.planner.schema import Plan

        if (trace_file is None) == (generate is None):
            raise ConfigError(
                "give exactly one of --trace FILE and --generate diurnal|bursty", field="--trace"
            )
        if generate is not None and generate not in GENERATORS:
            raise ConfigError(f"must be one of {', '.join(GENERATORS)}", field="--generate")
        if requests < 1:
            raise ConfigError("must be >= 1", field="--requests")
        if not 0 < duration_h <= 24 * 7:
            raise ConfigError("must be in (0, 168]", field="--duration-h")
        if not 0 <= prefix_share <= 1:
            raise ConfigError("must be in [0, 1]", field="--prefix-share")
        if not 0 < target <= 1:
            raise ConfigError("must be in (0, 1]", field="--target-attainment")
        plan = load_plan(plan_file)
        assert isinstance(plan, Plan)
        if trace_file is not None:
            trace = traces.load_trace(trace_file)
            name = trace_file.name
        else:
            duration_s = duration_h * 3600.0
            shape = traces.TraceShape(
                duration_s=duration_s,
                input_tokens=plan.traffic.input_tokens,
                output_tokens=plan.traffic.output_tokens,
                max_tokens=max(64, min(plan.roles[0].engine.max_model_len, 32_768)),
                prefix_share=prefix_share,
                seed=seed,
            )
            mean = requests / duration_s
            if generate == "diurnal":
                trace = traces.diurnal_trace(mean, shape)
            else:
                # bursts of 3x for ~1/6 of the time: base x (5/6 + 3/6) = mean
                trace = traces.bursty_trace(mean / (5 / 6 + 3 / 6), shape)
            name = f"{generate} (generated, seed {seed})"
            if not trace:
                raise ConfigError("the generated trace is empty; raise --requests", field="--requests")
        policies = policy or [p for p in DEFAULT_POLICIES]
        w = run_whatif(plan, trace, policies, trace_name=name, progress=lambda m: typer.echo(m, err=True))
        rec = recommend(w, target)
        rows = [s.row() for s in w.summaries]
        if as_json:
            typer.echo(json.dumps({"rows": rows, "recommendation": rec.model_dump()}, indent=2))
        else:
            typer.echo(
                f"{w.plan.name}: {name}, {w.requests:,} requests; SLO capacity "
                f"{w.spec.capacity_per_replica:.2f} req/s per replica at the plan's mix, work factor "
                f"{w.work_factor:.2f}, static peak {w.peak_replicas} replicas"
            )
            typer.echo(_table(rows))
            typer.echo(
                f"recommended: {rec.policy} (attainment {rec.evidence.attainment:.2%}, "
                f"{rec.evidence.gpu_hours:.1f} GPU-hours)"
            )
        if output is not None:
            output.mkdir(parents=True, exist_ok=True)
            summary = [
                {
                    **s.row(),
                    "settings": s.settings,
                    "attainment_per_hour": [round(a, 4) for a in s.attainment_per_hour],
                }
                for s in w.summaries
            ]
            (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            (output / "recommendation.json").write_text(rec.model_dump_json(indent=2) + "\n")
            if trace_file is None:
                traces.write_trace(trace, output / "trace.jsonl")
            written = ["summary.json", "recommendation.json"]
            try:
                plot(w, output / "autoscale.png")
                written.append("autoscale.png")
            except ModuleNotFoundError:
                typer.echo("no plot: install the [plots] extra (matplotlib)", err=True)
            typer.echo(
                f"wrote {', '.join(written)} to {output}; render with "
                f"`eksinfer render {plan_file} -o DIR --autoscale {output / 'recommendation.json'}`",
                err=True,
            )
