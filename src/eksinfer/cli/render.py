"""`eksinfer render PLAN.json -o DIR`: the Kustomize tree for a plan (library: eksinfer.deploy.render)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from eksinfer.errors import ConfigError

if TYPE_CHECKING:
    from eksinfer.autoscale.recommendation import Recommendation


def load_plan(path: Path) -> object:
    """Reads and validates a plan file; errors name the file and the first bad field."""
    from pydantic import ValidationError

    from eksinfer import untrusted
    from eksinfer.planner.schema import Plan
    from eksinfer.strict import config_error

    text = untrusted.read_text(path, field="PLAN")
    try:
        return Plan.model_validate_json(text)
    except ValidationError as err:
        raise config_error(err, source=str(path), default="plan") from None


def load_recommendation(path: Path, plan_name: str, mode: str) -> Recommendation:
    """Reads an `eksinfer autoscale` recommendation for `render --autoscale`; errors name the field."""
    from pydantic import ValidationError

    from eksinfer import untrusted
    from eksinfer.autoscale.recommendation import Recommendation
    from eksinfer.strict import config_error

    text = untrusted.read_text(path, field="--autoscale")
    try:
        rec = Recommendation.model_validate_json(text)
    except ValidationError as err:
        raise config_error(err, source=str(path), prefix="--autoscale") from None
    if rec.plan != plan_name:
        raise ConfigError(
            f"the recommendation is for plan {rec.plan!r}, not {plan_name!r}", field="--autoscale"
        )
    if mode != "aggregated":
        raise ConfigError("recommendations exist for aggregated plans only", field="--autoscale")
    return rec


def register(app: typer.Typer) -> None:
    @app.command("render")
    def render(
        plan_file: Path = typer.Argument(
            ..., metavar="PLAN.json", help="Plan written by `eksinfer plan --json`."
        ),
        output: Path = typer.Option(..., "--output", "-o", help="Folder to write the Kustomize tree into."),
        namespace: str = typer.Option("inference", "--namespace", "-n", help="Namespace of the workloads."),
        cluster: str = typer.Option(
            "eksinfer", "--cluster", help="EKS cluster name (discovery tags, node roles)."
        ),
        model_s3: str | None = typer.Option(
            None, "--model-s3", help="s3://bucket/prefix holding the weights: stream them, no cache volume."
        ),
        inference_pool: bool = typer.Option(False, "--inference-pool", hidden=True),
        expose: str = typer.Option(
            "none", "--expose", help="How outside clients reach the gateway: none, httproute or alb."
        ),
        gateway_ref: str | None = typer.Option(
            None,
            "--gateway-ref",
            help="NAMESPACE/NAME or NAMESPACE/NAME/LISTENER of the Gateway an HTTPRoute attaches to.",
        ),
        certificate_arn: str | None = typer.Option(
            None, "--certificate-arn", help="ACM certificate of the ALB's HTTPS listener (--expose alb)."
        ),
        hostname: str | None = typer.Option(None, "--hostname", help="Host name clients use (optional)."),
        image_snapshot: str | None = typer.Option(
            None, "--image-snapshot", help="EBS snapshot id with the engine image pre-pulled (Karpenter)."
        ),
        engine_image: str | None = typer.Option(
            None, "--engine-image", help="vLLM image (default vllm/vllm-openai)."
        ),
        gateway_image: str | None = typer.Option(
            None, "--gateway-image", help="eksinfer gateway image, e.g. a private ECR copy."
        ),
        prometheus_url: str | None = typer.Option(
            None,
            "--prometheus-url",
            help="Prometheus that KEDA queries (default http://prometheus-operated.monitoring.svc:9090).",
        ),
        capacity_reservation: list[str] | None = typer.Option(
            None,
            "--capacity-reservation",
            help="ODCR or Capacity Block for the GPU nodes: a cr-... id or KEY=VALUE tag (repeatable; "
            "Karpenter).",
        ),
        placement_group: str | None = typer.Option(
            None, "--placement-group", help="Existing cluster placement group for the GPU nodes (Karpenter)."
        ),
        route_headers: bool = typer.Option(
            False,
            "--route-headers",
            help="Gateway responses carry x-eksinfer-endpoint / x-eksinfer-route (they name pod addresses).",
        ),
        pd_backend: str = typer.Option(
            "disaggregatedset", "--pd-backend", help="Multi-node prefill/decode: disaggregatedset or lws."
        ),
        bedrock_role_arn: str | None = typer.Option(
            None,
            "--bedrock-role-arn",
            help="IAM role (IRSA) for the gateway's Bedrock tier; default: an EKS Pod Identity association.",
        ),
        autoscale_file: Path | None = typer.Option(
            None,
            "--autoscale",
            help="recommendation.json from `eksinfer autoscale`: its triggers, thresholds, behaviour and "
            "node limit replace the defaults.",
        ),
    ) -> None:
        """Render EKS manifests (nodes, engines, gateway, autoscaling, monitoring) for a plan."""
        from eksinfer.deploy.context import RenderOptions
        from eksinfer.deploy.render import render_plan
        from eksinfer.planner.schema import Plan

        if model_s3 is not None and not model_s3.startswith("s3://"):
            raise ConfigError("must start with s3://", field="--model-s3")
        if inference_pool:
            raise ConfigError(
                "removed: the gateway does not implement the endpoint-picker (ext_proc) protocol an "
                "InferencePool needs; use --expose httproute or alb (docs/deploy.md, Exposure)",
                field="--inference-pool",
            )
        if expose not in ("none", "httproute", "alb"):
            raise ConfigError("must be none, httproute or alb", field="--expose")
        if pd_backend not in ("disaggregatedset", "lws"):
            raise ConfigError("must be disaggregatedset or lws", field="--pd-backend")
        if prometheus_url is not None and not prometheus_url.startswith(("http://", "https://")):
            raise ConfigError("must be an http:// or https:// URL", field="--prometheus-url")
        if gateway_image is not None and (not gateway_image.strip() or " " in gateway_image):
            raise ConfigError("must be an image reference like REGISTRY/NAME:TAG", field="--gateway-image")
        plan = load_plan(plan_file)
        assert isinstance(plan, Plan)
        recommendation = None
        if autoscale_file is not None:
            recommendation = load_recommendation(autoscale_file, plan.name, plan.mode)
        defaults = RenderOptions()
        options = RenderOptions(
            engine_image=engine_image or defaults.engine_image,
            gateway_image=gateway_image or defaults.gateway_image,
            namespace=namespace,
            cluster_name=cluster,
            model_s3_uri=model_s3,
            expose="httproute" if expose == "httproute" else "alb" if expose == "alb" else "none",
            gateway_ref=gateway_ref,
            certificate_arn=certificate_arn,
            hostname=hostname,
            image_snapshot_id=image_snapshot,
            pd_backend="lws" if pd_backend == "lws" else "disaggregatedset",
            prometheus_url=prometheus_url or defaults.prometheus_url,
            route_headers=route_headers,
            capacity_reservations=tuple(capacity_reservation or ()),
            placement_group=placement_group,
            bedrock_role_arn=bedrock_role_arn,
            autoscale=recommendation,
        )
        written = render_plan(plan, output, options=options)
        for path in written:
            typer.echo(str(path))
        typer.echo(
            f"wrote {len(written)} files; check with `eksinfer lint {output}`, apply with `kubectl "
            f"apply -k {output}`",
            err=True,
        )
