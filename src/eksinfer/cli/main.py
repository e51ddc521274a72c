"""The `eksinfer` entry point: registers each subcommand module and turns EksinferError into one line."""

from __future__ import annotations

import sys

import typer

from eksinfer import __version__
from eksinfer.cli import autoscale, bench, doctor, gateway, lint, plan, render, sim, up
from eksinfer.errors import EksinferError
from eksinfer.extras import missing_extra_hint

# Each module's `register(app)` adds its command (help from the command's docstring), in this order in
# `--help`. The modules import their heavy parts inside the commands, so `eksinfer --help` stays fast.
SUBCOMMANDS = (plan, sim, bench, gateway, up, render, autoscale, lint, doctor)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"eksinfer {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="eksinfer",
        help="Plan, simulate, route, benchmark and deploy vLLM inference on Amazon EKS.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ) -> None:
        """Plan, simulate, route, benchmark and deploy vLLM inference on Amazon EKS."""

    for module in SUBCOMMANDS:
        module.register(app)
    return app


def run() -> None:
    app = build_app()
    try:
        status = app(standalone_mode=False)  # a typer.Exit(code) comes back as its code here
        if isinstance(status, int) and status:
            sys.exit(status)
    except EksinferError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except ModuleNotFoundError as err:
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
        hint = missing_extra_hint(err, command)
        if hint is None:
            raise
        typer.echo(f"error: {hint}", err=True)
        sys.exit(2)
    except Exception as err:  # click's usage errors arrive here in non-standalone mode
        line = _usage_line(err)
        if line is None:
            raise
        typer.echo(line, err=True)
        sys.exit(getattr(err, "exit_code", 2))


def _usage_line(err: Exception) -> str | None:
    """One line for a command-line parse error (missing argument, unknown option, bad value); None for
    anything else. Duck-typed: typer >= 0.22 raises its own vendored click's exceptions, which are not
    `click.ClickException`s, older typer raises click's."""
    message = getattr(err, "format_message", None)
    if not callable(message) or not isinstance(getattr(err, "exit_code", None), int):
        return None
    ctx = getattr(err, "ctx", None)
    where = getattr(ctx, "command_path", "eksinfer")
    return f"error: {' '.join(str(message()).split())} (see `{where} --help`)"


if __name__ == "__main__":
    run()
