"""`eksinfer lint DIR [--json]`: GPU-serving pitfalls in any manifests (library: eksinfer.deploy.lint)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from eksinfer.errors import EksinferError, UsageError


class LintFailed(EksinferError):
    """Errors were found: exit 1 (not 2, which means bad usage). Raised rather than typer.Exit so the exit
    status survives the entry point's non-standalone click call."""

    exit_code = 1


def register(app: typer.Typer) -> None:
    @app.command("lint")
    def lint(
        path: Path | None = typer.Argument(
            None, metavar="DIR", help="Folder (or file) of Kubernetes YAML/JSON manifests."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print findings as JSON."),
        rules: bool = typer.Option(False, "--rules", help="List the rules and exit."),
    ) -> None:
        """Check manifests for known GPU-serving pitfalls; exits 1 when any error is found."""
        from eksinfer.deploy.lint import RULES, lint_path

        if rules:
            for r in RULES.values():
                typer.echo(f"{r.id:40} {r.severity:8} {r.title}")
            return
        if path is None:
            raise UsageError("a folder or file of manifests is required (or --rules)", field="DIR")
        findings = lint_path(path)
        errors = sum(f.severity == "error" for f in findings)
        warnings = len(findings) - errors
        if as_json:
            doc = {
                "path": str(path),
                "errors": errors,
                "warnings": warnings,
                "findings": [f.to_dict() for f in findings],
            }
            typer.echo(json.dumps(doc, indent=2))
        else:
            for f in findings:
                typer.echo(f"{f.severity.upper()} [{f.rule}] {f.file}: {f.object}: {f.field}")
                typer.echo(f"    why: {f.why}")
                typer.echo(f"    fix: {f.fix}")
            typer.echo(f"{errors} error(s), {warnings} warning(s) in {path}")
        if errors:
            raise LintFailed(f"{errors} lint error(s) in {path}")
