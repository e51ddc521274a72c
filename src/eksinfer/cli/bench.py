"""`eksinfer bench`: load-test an OpenAI-compatible endpoint; `eksinfer bench compare A.json B.json`."""

from __future__ import annotations

from pathlib import Path

import typer

_HELP = "Load-test an OpenAI-compatible endpoint and report latency, throughput, goodput and KV hit rate."


def register(app: typer.Typer) -> None:
    bench_app = typer.Typer(help=_HELP, invoke_without_command=True, no_args_is_help=False)

    @bench_app.callback()
    def bench(
        ctx: typer.Context,
        target: list[str] | None = typer.Option(None, "--target", "-t", help="Base URL; repeat for several."),
        model: str | None = typer.Option(None, "--model", "-m", help="Model name (checked via /v1/models)."),
        config: Path | None = typer.Option(
            None, "--config", "-c", help="YAML file with any of the settings."
        ),
        api_key: str | None = typer.Option(None, "--api-key", envvar="EKSINFER_API_KEY", help="Bearer key."),
        endpoint: str | None = typer.Option(None, "--endpoint", help="completions (default) or chat."),
        no_stream: bool = typer.Option(False, "--no-stream", help="Non-streamed requests (no TTFT/ITL)."),
        concurrency: int | None = typer.Option(
            None, "--concurrency", help="Requests in flight (closed loop)."
        ),
        rate: float | None = typer.Option(None, "--rate", help="Poisson arrivals, req/s (open loop)."),
        arrival: str | None = typer.Option(None, "--arrival", help="poisson (default) or constant."),
        burstiness: float | None = typer.Option(
            None, "--burstiness", help="Gamma shape of arrival gaps (1: Poisson, <1: burstier)."
        ),
        session_header: str | None = typer.Option(
            None, "--session-header", help="Header with a per-conversation id, e.g. x-session-id."
        ),
        num_requests: int | None = typer.Option(None, "--num-requests", "-n", help="Measured requests."),
        duration: float | None = typer.Option(None, "--duration", help="Send for this many seconds."),
        warmup: int | None = typer.Option(None, "--warmup", help="Warm-up requests left out of the figures."),
        max_tokens: int | None = typer.Option(None, "--max-tokens", help="Output tokens (default 128)."),
        ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Send vLLM's ignore_eos: exact lengths."),
        workload: str | None = typer.Option(
            None, "--workload", "-w", help="random, shared-prefix, multi-turn or replay."
        ),
        workload_arg: list[str] | None = typer.Option(
            None, "--workload-arg", "-a", help="KEY=VALUE workload setting, e.g. num_groups=8; repeatable."
        ),
        dataset: Path | None = typer.Option(None, "--dataset", help="JSONL/ShareGPT file (implies replay)."),
        seed: int | None = typer.Option(None, "--seed", help="Seed of prompts and arrivals (default 0)."),
        slo_ttft_ms: float | None = typer.Option(None, "--slo-ttft-ms", help="Goodput SLO on TTFT."),
        slo_tpot_ms: float | None = typer.Option(None, "--slo-tpot-ms", help="Goodput SLO on TPOT."),
        slo_e2e_ms: float | None = typer.Option(None, "--slo-e2e-ms", help="Goodput SLO on e2e latency."),
        metrics_url: list[str] | None = typer.Option(
            None, "--metrics-url", help="Engine /metrics URL for the KV hit rate; repeatable."
        ),
        timeout: float | None = typer.Option(None, "--timeout", help="Per-request timeout, s (default 600)."),
        no_check_model: bool = typer.Option(False, "--no-check-model", help="Skip the /v1/models check."),
        reset_cache: bool = typer.Option(
            False, "--reset-prefix-cache", help="POST /reset_prefix_cache to each engine before the run."
        ),
        sweep: str | None = typer.Option(None, "--sweep", help="'auto' or rates '1,2,4': a rate sweep."),
        sweep_stages: int = typer.Option(5, "--sweep-stages", min=1, help="Stages of an auto sweep."),
        past_saturation: bool = typer.Option(
            False, "--past-saturation", help="Run every sweep stage, also after one saturates."
        ),
        output: Path | None = typer.Option(
            None, "--output", "-o", help="JSON file: summary + every request."
        ),
        plots: Path | None = typer.Option(None, "--plots", help="Folder for PNG plots."),
        label: str = typer.Option("", "--label", help="Name of this run in the output and in compare."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No live progress bar."),
    ) -> None:
        """Run a benchmark: `eksinfer bench --target URL --model NAME [--rate R | --concurrency C]`."""
        if ctx.invoked_subcommand is not None:
            return
        from rich.console import Console

        from eksinfer.bench.app import RunOptions, check_outputs, execute, report
        from eksinfer.bench.config import build_config, parse_key_values

        slo = {"ttft_ms": slo_ttft_ms, "tpot_ms": slo_tpot_ms, "e2e_ms": slo_e2e_ms}
        flags = {
            "target": target or None, "model": model, "api_key": api_key, "endpoint": endpoint,
            "stream": False if no_stream else None, "concurrency": concurrency, "rate": rate,
            "arrival": arrival, "burstiness": burstiness, "session_header": session_header,
            "num_requests": num_requests, "duration_s": duration, "warmup": warmup,
            "max_tokens": max_tokens, "ignore_eos": True if ignore_eos else None, "seed": seed,
            "slo": {k: v for k, v in slo.items() if v is not None} or None,
            "metrics_urls": metrics_url or None, "timeout_s": timeout,
            "check_model": False if no_check_model else None,
            "reset_prefix_cache": True if reset_cache else None,
        }  # fmt: skip
        args = parse_key_values(workload_arg or [], "--workload-arg")
        if dataset is not None:
            workload = workload or "replay"
            args["path"] = str(dataset)
        cfg = build_config(config, flags, workload, args)
        opts = RunOptions(output, plots, sweep, sweep_stages, not no_progress, label, past_saturation)
        check_outputs(opts)
        out, err = Console(), Console(stderr=True)
        code = report(execute(cfg, opts, err), opts, out, err)
        if code:
            raise SystemExit(code)  # typer.Exit is swallowed by the entry point's standalone_mode=False

    @bench_app.command("compare")
    def compare(
        a: Path = typer.Argument(..., help="Baseline result JSON (A)."),
        b: Path = typer.Argument(..., help="Result JSON to compare (B)."),
    ) -> None:
        """Print two saved runs side by side with B/A ratios."""
        from rich.console import Console

        from eksinfer.bench.app import compare as compare_runs

        compare_runs(a, b, Console())

    app.add_typer(bench_app, name="bench")
