"""`eksinfer gateway`: the OpenAI-compatible gateway with KV-cache-aware routing, from one YAML file."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("gateway")
    def gateway(
        config: Path | None = typer.Option(
            None, "--config", "-c", help="Gateway YAML (server, auth, endpoints, scrape, routing)."
        ),
        endpoints: str | None = typer.Option(
            None,
            "--endpoints",
            help=(
                "Comma-separated engine URLs replacing the file's endpoints"
                " (URL|tcp://HOST:PORT adds KV events)."
            ),
        ),
        preset: str | None = typer.Option(
            None, "--preset", help="Routing preset: kv-aware, approx-prefix, load, round-robin, ..."
        ),
        port: int | None = typer.Option(None, "--port", help="Port to listen on (default 8000)."),
        host: str | None = typer.Option(None, "--host", help="Address to listen on (default 0.0.0.0)."),
        workers: int | None = typer.Option(
            None, "--workers", help="Processes sharing the port (default 1; each routes on its own)."
        ),
        log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
    ) -> None:
        """Run the OpenAI-compatible gateway in front of vLLM-compatible engines."""
        from eksinfer.cli.logs import setup_logging
        from eksinfer.gateway.config import load_config, with_overrides
        from eksinfer.gateway.serve import run_gateway

        setup_logging(log_level)
        cfg = load_config(config)
        urls = [u.strip() for u in endpoints.split(",") if u.strip()] if endpoints else None
        cfg = with_overrides(cfg, endpoints=urls, preset=preset, port=port, host=host, workers=workers)

        def ready(runtime: object) -> None:
            from eksinfer.gateway.runtime import GatewayRuntime

            assert isinstance(runtime, GatewayRuntime)
            count = len(runtime.registry.all())
            typer.echo(
                f"eksinfer gateway on http://{cfg.server.host}:{runtime.port} "
                f"(preset {runtime.preset}, {count} static endpoints, {cfg.server.workers} worker(s));"
                " metrics at /metrics; Ctrl-C stops"
            )

        run_gateway(cfg, on_ready=ready)
