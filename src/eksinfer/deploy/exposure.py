"""How clients outside the cluster reach the gateway Service, with TLS by reference to a certificate:

    httproute   a Gateway API HTTPRoute attached to an existing Gateway (`--gateway-ref NS/NAME[/LISTENER]`);
                TLS terminates on that Gateway's HTTPS listener, whose certificateRefs the platform owns
    alb         an AWS Load Balancer Controller Ingress: an internet-facing ALB with the ACM certificate
                `--certificate-arn`, HTTPS only, IP targets (the gateway pods themselves)

Both route only `/v1` (the OpenAI API) and `/health`; `/metrics` and `/ready` stay inside the cluster. Streams
outlive an ALB's default 60 s idle timeout when the first token is slow, so the idle timeout and the target
deregistration delay follow the plan's longest request (`Ctx.longest_request_s`), as the gateway's drain does.
"""

from __future__ import annotations

from eksinfer.deploy.context import Ctx, Obj

ALB_MAX_IDLE_S = 4000  # Elastic Load Balancing limit for idle_timeout.timeout_seconds
ALB_MAX_DEREGISTRATION_S = 3600


def _paths() -> list[tuple[str, str]]:
    return [("PathPrefix", "/v1"), ("Exact", "/health")]


def http_route(ctx: Ctx) -> Obj:
    ref = ctx.opts.gateway_ref or ""
    parts = ref.split("/")
    parent: Obj = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": parts[0]}
    parent["name"] = parts[1]
    if len(parts) == 3:
        parent["sectionName"] = parts[2]
    spec: Obj = {"parentRefs": [parent]}
    if ctx.opts.hostname:
        spec["hostnames"] = [ctx.opts.hostname]
    backend = {"name": f"{ctx.name}-gateway", "port": 80}
    spec["rules"] = [
        {
            "matches": [{"path": {"type": kind, "value": value}} for kind, value in _paths()],
            "backendRefs": [backend],
            # A request may stream for the plan's longest request; 0s would disable the limit entirely.
            "timeouts": {"request": f"{ctx.longest_request_s() + 30}s"},
        }
    ]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": ctx.meta(f"{ctx.name}-gateway", "gateway"),
        "spec": spec,
    }


def alb_ingress(ctx: Ctx) -> Obj:
    idle = min(ALB_MAX_IDLE_S, max(60, ctx.longest_request_s()))
    drain = min(ALB_MAX_DEREGISTRATION_S, ctx.longest_request_s())
    prefix = "alb.ingress.kubernetes.io"
    meta = ctx.meta(f"{ctx.name}-gateway", "gateway")
    meta["annotations"] = {
        f"{prefix}/scheme": "internet-facing",
        f"{prefix}/target-type": "ip",
        f"{prefix}/listen-ports": '[{"HTTPS": 443}]',
        f"{prefix}/certificate-arn": ctx.opts.certificate_arn or "",
        f"{prefix}/ssl-policy": "ELBSecurityPolicy-TLS13-1-2-2021-06",
        f"{prefix}/backend-protocol": "HTTP",
        f"{prefix}/healthcheck-path": "/ready",
        f"{prefix}/load-balancer-attributes": f"idle_timeout.timeout_seconds={idle}",
        f"{prefix}/target-group-attributes": f"deregistration_delay.timeout_seconds={drain}",
    }
    paths = [
        {
            "path": value,
            "pathType": "Prefix" if kind == "PathPrefix" else "Exact",
            "backend": {"service": {"name": f"{ctx.name}-gateway", "port": {"name": "http"}}},
        }
        for kind, value in _paths()
    ]
    rule: Obj = {"http": {"paths": paths}}
    if ctx.opts.hostname:
        rule["host"] = ctx.opts.hostname
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": meta,
        "spec": {"ingressClassName": "alb", "rules": [rule]},
    }


def exposure_objects(ctx: Ctx) -> list[Obj]:
    if ctx.opts.expose == "httproute":
        return [http_route(ctx)]
    if ctx.opts.expose == "alb":
        return [alb_ingress(ctx)]
    return []
