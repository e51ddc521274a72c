"""`eksinfer up`: a local stack in one command, simulated engines behind the gateway."""

from __future__ import annotations

import typer

DEFAULT_SIM_MODEL = "llama-3.1-8b"  # `eksinfer sim`'s default --model


def agent_flags(model: str | None) -> tuple[str, ...]:
    """The tool and reasoning flags a rendered deployment gives this model's engines
    (`deploy.tool_parsers`), so the local stack answers tool choices as that deployment's vLLM would
    (without a parser vLLM 0.32 refuses them)."""
    from eksinfer.deploy.tool_parsers import parsers_for

    parsers = parsers_for(model or DEFAULT_SIM_MODEL)
    if parsers is None:
        return ()
    flags = ("--enable-auto-tool-choice", "--tool-call-parser", parsers.tool)
    return flags + (("--reasoning-parser", parsers.reasoning) if parsers.reasoning else ())


def register(app: typer.Typer) -> None:
    @app.command("up")
    def up(
        replicas: int = typer.Option(4, "--replicas", min=1, help="Simulated engines to start."),
        port: int = typer.Option(8000, "--port", help="Gateway port."),
        preset: str = typer.Option("kv-aware", "--preset", help="Routing preset."),
        model: str | None = typer.Option(None, "--model", help="Simulated model (catalog name)."),
        gpu: str | None = typer.Option(None, "--gpu", help="Simulated GPU (catalog name)."),
        time_scale: float | None = typer.Option(
            None, "--time-scale", help="Wall seconds per simulated second (0: as fast as possible)."
        ),
        num_gpu_blocks: int | None = typer.Option(None, "--num-gpu-blocks", help="KV blocks per engine."),
        sim_port: int = typer.Option(8100, "--sim-port", help="Port of engine 0 (engine i: +i)."),
        kv_events_port: int = typer.Option(5557, "--kv-events-port", help="KV-event port of engine 0."),
        host: str = typer.Option("127.0.0.1", "--host", help="Gateway listen address."),
        log_level: str = typer.Option("warning", "--log-level", help="debug, info, warning or error."),
    ) -> None:
        """Start simulated engines and the gateway on localhost; Ctrl-C stops both."""
        from eksinfer.cli.logs import setup_logging
        from eksinfer.gateway.serve import run_event_loop, serve_until_signal
        from eksinfer.stack import SimProcess, StackOptions, banner, gateway_config

        setup_logging(log_level)
        opts = StackOptions(
            replicas=replicas,
            port=port,
            host=host,
            preset=preset,
            sim_port=sim_port,
            kv_events_port=kv_events_port,
            model=model,
            gpu=gpu,
            time_scale=time_scale,
            num_gpu_blocks=num_gpu_blocks,
            sim_args=agent_flags(model),
        )
        config = gateway_config(opts)
        sim = SimProcess(opts)
        typer.echo(f"starting {replicas} simulated engines ...")

        def ready(runtime: object) -> None:
            from eksinfer.gateway.runtime import GatewayRuntime

            assert isinstance(runtime, GatewayRuntime)
            models = sorted({m for s in runtime.registry.all() for m in s.models}) or [model or "model"]
            typer.echo(banner(opts, runtime.port or port, models[0]))

        async def main() -> None:
            await serve_until_signal(
                config, on_ready=ready, before_start=sim.start, after_stop=sim.stop, watch=sim.died
            )

        run_event_loop(main)
        typer.echo("stopped")
