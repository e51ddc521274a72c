"""`eksinfer doctor [DIR] [--context NAME]`: can the cluster take this rendered tree? (library:
eksinfer.deploy.doctor). Read-only: it lists, never changes, anything in the cluster."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from eksinfer.errors import EksinferError


class DoctorFailed(EksinferError):
    """The cluster lacks something the tree needs: exit 1 (2 stays for bad usage)."""

    exit_code = 1


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor(
        path: Path = typer.Argument(Path("."), metavar="DIR", help="A tree written by `eksinfer render`."),
        context: str | None = typer.Option(
            None, "--context", help="kubeconfig context (default: the current one)."
        ),
        kubeconfig: Path | None = typer.Option(
            None, "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print findings as JSON."),
    ) -> None:
        """Check that the cluster has what the tree needs (CRDs, storage, GPU and EFA plugins, Prometheus,
        cluster name); exits 1 when something it needs is missing."""
        from eksinfer.deploy.doctor import diagnose, read_cluster
        from eksinfer.deploy.doctor.checks import gateway_refs, namespaces_to_read
        from eksinfer.deploy.lint.manifests import load

        docs = load(path)
        facts = read_cluster(kubeconfig, context, namespaces_to_read(docs), gateway_refs(docs))
        findings = diagnose(docs, facts)
        errors = sum(f.severity == "error" for f in findings)
        if as_json:
            doc = {
                "cluster": facts.cluster_name,
                "server": facts.server,
                "errors": errors,
                "warnings": len(findings) - errors,
                "findings": [f.to_dict() for f in findings],
            }
            typer.echo(json.dumps(doc, indent=2))
        else:
            for f in findings:
                typer.echo(f"{f.severity.upper()} [{f.check}] {f.subject}")
                typer.echo(f"    why: {f.why}")
                typer.echo(f"    fix: {f.fix}")
            name = facts.cluster_name or facts.server
            typer.echo(f"{errors} error(s), {len(findings) - errors} warning(s): {path} on {name}")
        if errors:
            raise DoctorFailed(f"the cluster is missing {errors} thing(s) {path} needs")
