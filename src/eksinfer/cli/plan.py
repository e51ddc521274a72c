"""`eksinfer plan`: parse flags into a PlanRequest, call the planner, print a table, JSON or YAML."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from eksinfer.errors import UnknownNameError, UsageError

if TYPE_CHECKING:
    from eksinfer.planner import Plan, PlanRequest


def _on_prem(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    gpu, _, count = value.partition(":")
    if not count.isdigit():
        raise UsageError(f"expected GPU:COUNT such as H100:16, got {value!r}", field="--on-prem")
    return gpu, int(count)


def build_request(
    *,
    model: str | None,
    model_config: Path | None,
    traffic: dict[str, Any],
    hf_id: str | None = None,
    served_name: str | None = None,
    slo: dict[str, Any],
    constraints: dict[str, Any],
) -> PlanRequest:
    """Turn CLI values into a PlanRequest (catalog look-ups raise UnknownNameError with close names)."""
    from eksinfer.catalog import get_gpu, get_model, load_model_config
    from eksinfer.planner import Constraints, OnPremPool, PlanRequest, Slo, Traffic

    if (model is None) == (model_config is None):
        raise UsageError("give exactly one of --model ID or --model-config PATH", field="--model")
    for flag, value in (("--hf-id", hf_id), ("--served-name", served_name)):
        if value is not None and (not value.strip() or any(c.isspace() for c in value)):
            raise UsageError(f"{value!r} is empty or has spaces", field=flag)
    if model is not None:
        if hf_id is not None:
            raise UsageError(
                "only with --model-config (catalog models know their checkpoints)", field="--hf-id"
            )
        spec = get_model(model)
        if served_name is not None:
            spec = dataclasses.replace(spec, id=served_name)
    else:
        assert model_config is not None
        spec = load_model_config(model_config, hf_id=hf_id, served_name=served_name)
    on_prem = _on_prem(constraints.pop("on_prem"))
    pool = None
    if on_prem:
        try:
            pool = OnPremPool(get_gpu(on_prem[0]).name, on_prem[1])
        except UnknownNameError as err:
            raise UnknownNameError("GPU", on_prem[0], err.known, field="--on-prem") from err
    families = tuple(f.strip() for f in (constraints.pop("families") or "").split(",") if f.strip())
    constraints["without"] = tuple(
        w.strip() for w in (constraints.pop("without", None) or "").split(",") if w.strip()
    )
    mix_text = traffic.pop("prompt_mix", None)
    if mix_text is not None:
        from eksinfer.perf.mix import mean_tokens, parse_prompt_mix

        mix = parse_prompt_mix(mix_text)
        mean_in, mean_out = mean_tokens(mix)
        traffic.update(prompt_mix=mix, input_tokens=round(mean_in), output_tokens=max(1, round(mean_out)))
    return PlanRequest(
        model=spec,
        traffic=Traffic(**traffic),
        slo=Slo.from_preset(slo["preset"], ttft_s=slo["ttft_s"], tpot_s=slo["tpot_s"]),
        constraints=Constraints(instance_families=families, on_prem=pool, **constraints),
    )


def _fmt_money(value: float) -> str:
    return f"${value:,.0f}" if value >= 100 else f"${value:,.2f}"


def _summary_rows(p: Plan) -> list[tuple[str, str]]:
    """(label, text) lines: instances, each role and its vllm command, nodes, routing, prediction, cost."""
    inst, pred = p.instance, p.prediction
    rows = [
        (
            "instances",
            f"{p.nodes.total_nodes} x {inst.type} ({inst.gpus} x {inst.gpu}), {inst.capacity_type}, "
            f"${inst.price_per_hour_usd:,.2f}/h in {inst.region}, {inst.price_book or 'price'} book of "
            f"{inst.price_date}",
        )
    ]
    for role in p.roles:
        e = role.engine
        rows.append(
            (
                f"{role.name} x{role.replicas}",
                f"TP {e.tensor_parallel_size} x PP {e.pipeline_parallel_size}"
                + (f" x DP {e.data_parallel_size}" if e.data_parallel_size > 1 else "")
                + f", {e.precision}, "
                f"KV {e.kv_cache_dtype}, "
                f"{e.gpus_per_replica} GPU(s) on {e.nodes_per_replica} node(s)",
            )
        )
        rows.append(("  vllm serve", f"{p.model.hf_id} " + " ".join(e.vllm_args)))
        if e.env:
            rows.append(("  environment", " ".join(f"{k}={v}" for k, v in sorted(e.env.items()))))
    mig = f", MIG {p.nodes.mig_profile}" if p.nodes.mig_profile else ""
    rows += [
        (
            "nodes",
            f"{p.nodes.provisioning}, max {p.nodes.max_nodes}, start-up ~{p.nodes.node_startup_s:.0f} s{mig}",
        ),
        ("routing", f"{p.routing.strategy} (eksinfer gateway --preset {p.routing.gateway_preset})"),
        (
            "predicted",
            f"TTFT {pred.ttft_s:.3f} s, TPOT {pred.tpot_s * 1e3:.1f} ms, "
            f"{pred.throughput_tokens_per_s:,.0f} output tok/s, capacity {pred.requests_per_s:.2f} req/s",
        ),
        *_class_rows(p),
        *_knee_rows(p),
        *_ground_rows(p),
        (
            "memory",
            f"{pred.weight_gib_per_gpu:.1f} GiB weights/GPU, {pred.kv_cache_gib_per_replica:.1f} GiB "
            f"KV/replica ({pred.num_gpu_blocks:,} blocks), {pred.max_concurrency_per_replica} seqs fit",
        ),
        (
            "cost",
            f"{_fmt_money(p.cost.monthly_usd)}/month, "
            f"${p.cost.per_million_tokens_usd:.3f} per million tokens",
        ),
    ]
    for other in p.cost.comparisons:
        then = "not priced" if other.monthly_usd is None else f"{_fmt_money(other.monthly_usd)}/month"
        rows.append(("  compare", f"same nodes at the {other.book} book's prices ({other.as_of}): {then}"))
    if p.on_prem:
        rows.append(("on-prem", f"{p.on_prem.replicas} replica(s) on {p.on_prem.gpus} x {p.on_prem.gpu}"))
    return rows


def _class_rows(p: Plan) -> list[tuple[str, str]]:
    """A prompt mix's classes: each one's TTFT, and in P/D where it prefills."""
    parts = [
        f"{c.share:.0%} {c.input_tokens}/{c.output_tokens}: TTFT {c.ttft_s:.3f} s"
        + (
            (" (prefill pool)" if c.remote_prefill else " (decode engine)")
            if p.mode == "disaggregated"
            else ""
        )
        for c in p.prediction.classes
    ]
    return [("  by class", "; ".join(parts))] if parts else []


def _knee_rows(p: Plan) -> list[tuple[str, str]]:
    """Where latency turns up and where the queue runs away, for a rate target (open loop)."""
    pred = p.prediction
    if pred.saturation_requests_per_s is None or pred.knee_requests_per_s is None:
        return []
    curve = ", ".join(
        f"{pt.requests_per_s:.3g}: " + ("saturated" if pt.ttft_s is None else f"{pt.ttft_s:.2f} s")
        for pt in pred.load_curve
    )
    return [
        (
            "load",
            f"knee {pred.knee_requests_per_s:.2f} req/s (latency x2), saturates at "
            f"{pred.saturation_requests_per_s:.2f} req/s; mean TTFT by arrival rate: {curve}",
        )
    ]


def _ground_rows(p: Plan) -> list[tuple[str, str]]:
    """The footing of the prediction: calibrated, or a visible warning per unmeasured part, with the band."""
    g = p.ground
    if g is None:
        return []
    band = (
        f"band TTFT {g.ttft_s[0]:.3f}-{g.ttft_s[1]:.3f} s, TPOT {g.tpot_s[0] * 1e3:.1f}-"
        f"{g.tpot_s[1] * 1e3:.1f} ms, {g.throughput_tokens_per_s[0]:,.0f}-"
        f"{g.throughput_tokens_per_s[1]:,.0f} tok/s"
    )
    if g.measured:
        return [("ground", f"{g.basis}; {band}")]
    rows = [("ground", f"[bold red]UNMEASURED[/bold red]: predictions may be far off; {band}")]
    rows += [("  !", w) for w in g.warnings]
    return rows


ALT_COLUMNS = (
    "instance",
    "mode",
    "TP x PP",
    "precision",
    "KV",
    "replicas",
    "$/month",
    "$/M tok",
    "TTFT s",
    "TPOT ms",
    "ground",
)


def print_table(plan: Plan) -> None:
    """The readable default: what to run, on what, for how much, and why."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(100, Console().width))
    m = plan.model
    console.print(
        f"[bold]{plan.name}[/bold]  tier {plan.tier}  {plan.mode}  {m.hf_id}  "
        f"({m.total_params_b:g}B total, {m.active_params_b:g}B active, {m.attention})"
    )
    for title, rows in (("", _summary_rows(plan)), ("why", list(plan.why.items()))):
        table = Table(title=title or None, show_header=False, box=None, title_justify="left")
        table.add_column(style="bold cyan" if not title else "bold", no_wrap=True)
        table.add_column()
        for label, text in rows:
            table.add_row(label, text)
        console.print(table)
    if plan.alternatives:
        alts = Table(title="alternatives", title_justify="left")
        for col in ALT_COLUMNS:
            alts.add_column(col, justify="right" if col[0] in "$TR" else "left", no_wrap=col == "instance")
        for a in plan.alternatives:
            alts.add_row(
                a.instance_type,
                "P/D" if a.mode == "disaggregated" else "agg",
                f"{a.tensor_parallel_size} x {a.pipeline_parallel_size}"
                + (f" x DP {a.data_parallel_size}" if a.data_parallel_size > 1 else ""),
                a.precision,
                a.kv_cache_dtype,
                str(a.replicas),
                _fmt_money(a.monthly_usd),
                f"{a.per_million_tokens_usd:.3f}",
                f"{a.ttft_s:.3f}",
                f"{a.tpot_s * 1e3:.1f}",
                "measured" if a.measured else "UNMEASURED",
            )
        console.print(alts)


def print_pareto(request: PlanRequest, plan: Plan, png: Path) -> None:
    """The front (and the chosen point) as a table on stderr, every point as a PNG."""
    from rich.console import Console
    from rich.table import Table

    from eksinfer.planner.pareto import pareto, slo_user_speed, write_png

    points = pareto(request, plan)
    shown = sorted((p for p in points if p.on_front or p.chosen), key=lambda p: -p.tokens_per_s_per_user)
    slo = f"TPOT SLO: >= {slo_user_speed(request):.1f} tok/s per user"
    table = Table(title=f"Pareto front ({len(points)} points; {slo})", title_justify="left")
    for col in ("engine", "mode", "batch", "tok/s/GPU", "tok/s/user", "TTFT s", "SLO", ""):
        table.add_column(col, justify="right" if col not in ("engine", "mode", "") else "left")
    for p in shown:
        table.add_row(
            p.label,
            "P/D" if p.mode == "disaggregated" else "agg",
            str(p.concurrency),
            f"{p.tokens_per_s_per_gpu:,.0f}",
            f"{p.tokens_per_s_per_user:.1f}",
            f"{p.ttft_s:.3f}",
            "meets" if p.meets_slo else "misses",
            "<- plan" if p.chosen else "",
        )
    console = Console(stderr=True, width=max(100, Console().width))
    console.print(table)
    console.print(f"wrote {write_png(points, request, png)}")


def plan_from(request: PlanRequest, from_phase: str) -> Plan:
    """The same request planned at an earlier (or later) phase; errors name --from."""
    from eksinfer.planner import make_plan
    from eksinfer.planner.phases import components, early

    constraints = dataclasses.replace(request.constraints, phase=from_phase)
    if early(from_phase):  # MIG and custom AMIs need Karpenter (phase 2)
        constraints = dataclasses.replace(constraints, needs_mig=False, custom_ami=False)
    if all(c.name != "hybrid-nodes" for c in components(from_phase, constraints.without)):
        constraints = dataclasses.replace(constraints, on_prem=None)  # hybrid nodes arrive in phase 3
    try:
        return make_plan(dataclasses.replace(request, constraints=constraints))
    except UsageError as err:
        if err.field != "--phase":
            raise
        raise UsageError(str(err).removeprefix("--phase: "), field="--from") from None


def print_changes(old: Plan, new: Plan, *, err: bool = False) -> None:
    """What moving from `old`'s phase to `new`'s changes: plan fields, then rendered objects and files (on
    stderr when stdout carries --json or --yaml)."""
    from eksinfer.planner.phases import components, diff_stacks, plan_changes

    assert old.stack is not None
    assert new.stack is not None
    before = {c.name for c in components(old.stack.phase, tuple(old.stack.without))}
    after = [c for c in components(new.stack.phase, tuple(new.stack.without))]
    typer.echo(f"\nphase {old.stack.phase} -> {new.stack.phase}", err=err)
    for comp in after:
        if comp.name not in before:
            typer.echo(f"  + {comp.name}: {comp.what}", err=err)
    for name in sorted(before - {c.name for c in after}):
        typer.echo(f"  - {name}", err=err)
    for line in plan_changes(old, new):
        typer.echo(f"  ~ {line}", err=err)
    changes = diff_stacks(old, new)
    typer.echo(f"rendered tree: {len(changes)} change(s)", err=err)
    for ch in changes:
        typer.echo(f"  {ch.kind:<8} {ch.path}" + (f"  ({ch.detail})" if ch.detail else ""), err=err)


def render(plan: Plan, directory: Path) -> None:
    """Hand the plan to the deploy renderer (imported only when asked for)."""
    from eksinfer.deploy.render import render_plan

    render_plan(plan, directory)


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan_command(
        model: str | None = typer.Option(None, "--model", "-m", help="Catalog model id, e.g. llama-3.3-70b."),
        model_config: Path | None = typer.Option(
            None, "--model-config", help="A local Hugging Face config.json."
        ),
        hf_id: str | None = typer.Option(
            None,
            "--hf-id",
            help="Checkpoint vLLM serves for --model-config, e.g. mistralai/Mistral-7B-Instruct-v0.3 "
            "(default: the config's _name_or_path, else its folder).",
        ),
        served_name: str | None = typer.Option(
            None, "--served-name", help="Model name clients send (vLLM --served-model-name)."
        ),
        input_tokens: int = typer.Option(1024, "--input-tokens", help="Mean prompt length, tokens."),
        output_tokens: int = typer.Option(256, "--output-tokens", help="Mean generated length, tokens."),
        requests_per_s: float | None = typer.Option(
            None, "--requests-per-s", help="Target rate (default 1)."
        ),
        concurrency: int | None = typer.Option(None, "--concurrency", help="Target concurrent requests."),
        prompt_mix: str | None = typer.Option(
            None,
            "--prompt-mix",
            help="Classes of requests SHARE:INPUT/OUTPUT, e.g. 0.3:8192/256,0.7:128/256 (replaces "
            "--input-tokens / --output-tokens; priced class by class).",
        ),
        shared_prefix_ratio: float = typer.Option(
            0.0, "--shared-prefix-ratio", help="Prompt share cached, 0-1."
        ),
        preset: str = typer.Option("conversational", "--preset", help="SLO preset: conversational or batch."),
        ttft: float | None = typer.Option(None, "--ttft", help="p99 TTFT target, s (overrides the preset)."),
        tpot: float | None = typer.Option(None, "--tpot", help="p99 TPOT target, s (overrides the preset)."),
        families: str | None = typer.Option(None, "--families", help="Allowed EC2 families, e.g. p5,p5en."),
        capacity_type: str = typer.Option(
            "on-demand",
            "--capacity-type",
            help="on-demand, spot, capacity-block or reserved (the last two priced from --prices FILE).",
        ),
        max_nodes: int | None = typer.Option(None, "--max-nodes", help="Most GPU nodes the plan may use."),
        budget: float | None = typer.Option(None, "--budget", help="Monthly budget, USD."),
        needs_mig: bool = typer.Option(False, "--needs-mig", help="Serve from MIG slices."),
        needs_dra: bool = typer.Option(False, "--needs-dra", help="Pods claim GPUs through DRA."),
        custom_ami: bool = typer.Option(False, "--custom-ami", help="Nodes need a custom AMI."),
        on_prem: str | None = typer.Option(
            None, "--on-prem", help="On-prem GPUs via Hybrid Nodes, e.g. H100:16."
        ),
        precision: str | None = typer.Option(
            None, "--precision", help="Force bf16, fp8, int4, fp4 or mxfp4 (gpt-oss's own) weights."
        ),
        kv_cache_dtype: str | None = typer.Option(
            None, "--kv-cache-dtype", help="Force auto or fp8 KV cache (default: search both)."
        ),
        prices: str | None = typer.Option(
            None, "--prices", help="Price book (aws-2026-08: newest, default; reference: 2025) or file."
        ),
        region: str | None = typer.Option(None, "--region", help="AWS region to price (default us-east-1)."),
        bedrock_fallback: bool = typer.Option(
            True,
            "--bedrock-fallback/--no-bedrock-fallback",
            help="Amazon Bedrock as the last tier (default on).",
        ),
        bedrock_model: str | None = typer.Option(
            None, "--bedrock-model", help="Bedrock model id, inference profile or ARN for the fallback tier."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
        as_yaml: bool = typer.Option(False, "--yaml", help="Print the plan as YAML."),
        render_dir: Path | None = typer.Option(None, "--render", help="Also render EKS manifests into DIR."),
        pareto_png: Path | None = typer.Option(
            None, "--pareto", help="Also print the tokens/s per GPU vs per user front and write it as a PNG."
        ),
        phase: str | None = typer.Option(
            None, "--phase", help="Plan one step of the migration path: 1, 1.5, 2, 3 or 4 (docs/planner.md)."
        ),
        from_phase: str | None = typer.Option(
            None, "--from", help="With --phase: also print what changes coming from this phase."
        ),
        without: str | None = typer.Option(
            None, "--without", help="With --phase: leave out optional parts, e.g. bedrock-fallback."
        ),
    ) -> None:
        """Plan GPUs, parallelism, replicas and cost for a model, traffic and SLOs."""
        from eksinfer.planner import make_plan

        if as_json and as_yaml:
            raise UsageError("choose one of --json and --yaml", field="--yaml")
        if from_phase is not None:
            if phase is None:
                raise UsageError("only with --phase", field="--from")
            from eksinfer.planner.phases import check_phase

            check_phase(from_phase, field="--from")
            if from_phase == phase:
                raise UsageError(f"is the same phase as --phase ({phase})", field="--from")
        request = build_request(
            model=model,
            model_config=model_config,
            hf_id=hf_id,
            served_name=served_name,
            traffic={
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "requests_per_s": requests_per_s,
                "concurrency": concurrency,
                "shared_prefix_ratio": shared_prefix_ratio,
                "prompt_mix": prompt_mix,
            },
            slo={"preset": preset, "ttft_s": ttft, "tpot_s": tpot},
            constraints={
                "families": families,
                "capacity_type": capacity_type,
                "max_nodes": max_nodes,
                "monthly_budget_usd": budget,
                "needs_mig": needs_mig,
                "needs_dra": needs_dra,
                "custom_ami": custom_ami,
                "on_prem": on_prem,
                "precision": precision,
                "kv_cache_dtype": kv_cache_dtype,
                "prices": prices,
                "region": region,
                "bedrock_fallback": bedrock_fallback,
                "bedrock_model": bedrock_model,
                "phase": phase,
                "without": without,
            },
        )
        before = None if from_phase is None else plan_from(request, from_phase)
        plan = make_plan(request)
        if as_json:
            typer.echo(plan.model_dump_json(indent=2))
        elif as_yaml:
            import yaml

            typer.echo(yaml.safe_dump(plan.model_dump(mode="json"), sort_keys=False), nl=False)
        else:
            print_table(plan)
        if before is not None:
            print_changes(before, plan, err=as_json or as_yaml)
        if pareto_png is not None:
            print_pareto(request, plan, pareto_png)
        if render_dir is not None:
            render(plan, render_dir)
