"""The plan's Amazon Bedrock tier in the rendered tree: the gateway's `pools` and `models.<m>.cascade`, the
AWS identity of the gateway's ServiceAccount, and an IAM policy allowing exactly the mapped model.

    DIR/gateway/configmap-*.yaml            pools.bedrock {kind: bedrock, region, models}, models.<m>.cascade
    DIR/bedrock/iam-policy.json             bedrock:InvokeModel + InvokeModelWithResponseStream on the model
    DIR/bedrock/pod-identity.eksctl.yaml    the EKS Pod Identity association (`eksctl create
                                            podidentityassociation -f`), with the policy inline

Identity: EKS Pod Identity by default (no annotation, no OIDC provider; the association lives in the EKS
API, so it is an eksctl file beside the tree, like `cluster/eksctl-nodegroup.yaml`, not a Kubernetes object:
no API server would validate it). `render --bedrock-role-arn ARN` uses IRSA instead: the ServiceAccount gets
the `eks.amazonaws.com/role-arn` annotation and the policy JSON is for that role. Converse is authorised by
`bedrock:InvokeModel` and ConverseStream by `bedrock:InvokeModelWithResponseStream` (Amazon Bedrock API
reference, Converse / ConverseStream "required permissions").
"""

from __future__ import annotations

import json
from typing import Any

from eksinfer.catalog.bedrock import iam_resources
from eksinfer.deploy.context import Ctx, Obj

BEDROCK_POOL = "bedrock"
POLICY_FILE = "bedrock/iam-policy.json"
POD_IDENTITY_FILE = "bedrock/pod-identity.eksctl.yaml"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
ACTIONS = ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"]
# Worker threads for botocore's blocking calls = Bedrock calls in flight per gateway pod; a stream holds one
# for its life, so 64 covers 64 concurrent fallback streams per pod (2 pods: 128).
MAX_CONCURRENCY = 64


def enabled(ctx: Ctx) -> bool:
    return ctx.plan.fallback is not None


def service_account_name(ctx: Ctx) -> str:
    return f"{ctx.name}-gateway"


def _account(ctx: Ctx) -> str:
    """The AWS account of inference-profile ARNs: the IRSA role's, else any (`*`; the profile id and Region
    still pin the resource)."""
    arn = ctx.opts.bedrock_role_arn
    return arn.split(":")[4] if arn else "*"


def policy(ctx: Ctx) -> dict[str, Any]:
    fallback = ctx.plan.fallback
    assert fallback is not None
    statements = []
    for i, part in enumerate(iam_resources(fallback.model_id, fallback.region, _account(ctx))):
        sid = "InvokeMappedModel" if i == 0 else "InvokeThroughProfileOnly"
        statements.append({"Sid": sid, "Effect": "Allow", "Action": ACTIONS, **part})
    return {"Version": "2012-10-17", "Statement": statements}


def gateway_sections(ctx: Ctx, vllm_pools: list[str]) -> dict[str, Any]:
    """`pools` and `models` of the gateway config: the self-hosted pools in cascade order, then Bedrock."""
    fallback = ctx.plan.fallback
    if fallback is None:
        return {}
    max_len = ctx.plan.roles[-1].engine.max_model_len
    pools: dict[str, Any] = {name: {"kind": "vllm", "max_context_tokens": max_len} for name in vllm_pools}
    pools[BEDROCK_POOL] = {
        "kind": "bedrock",
        "region": fallback.region,
        "models": {ctx.served_name(): fallback.model_id},
        "max_concurrency": MAX_CONCURRENCY,
    }
    route = {"cascade": [*vllm_pools, BEDROCK_POOL], "ttft_slo_s": ctx.plan.slo.ttft_s}
    return {"pools": pools, "models": {ctx.served_name(): route}}


def service_account_annotations(ctx: Ctx) -> dict[str, str]:
    if not enabled(ctx):
        return {}
    if ctx.opts.bedrock_role_arn:
        return {IRSA_ANNOTATION: ctx.opts.bedrock_role_arn}
    return {"eksinfer.io/needs": f"EKS Pod Identity association for Amazon Bedrock ({POD_IDENTITY_FILE})"}


def pod_identity(ctx: Ctx) -> Obj:
    """eksctl's ClusterConfig with one Pod Identity association (and the agent add-on it needs)."""
    return {
        "apiVersion": "eksctl.io/v1alpha5",
        "kind": "ClusterConfig",
        "metadata": {"name": ctx.opts.cluster_name, "region": ctx.plan.instance.region},
        "addons": [{"name": "eks-pod-identity-agent"}],
        "iam": {
            "podIdentityAssociations": [
                {
                    "namespace": ctx.ns,
                    "serviceAccountName": service_account_name(ctx),
                    "roleName": f"{ctx.opts.cluster_name}-{ctx.name}-bedrock"[:64],
                    "createServiceAccount": False,
                    "permissionPolicy": policy(ctx),
                }
            ]
        },
    }


def files(ctx: Ctx, header: str, to_yaml: Any) -> dict[str, str]:
    """The files beside the tree (not API objects)."""
    if not enabled(ctx):
        return {}
    out = {POLICY_FILE: json.dumps(policy(ctx), indent=2) + "\n"}
    if not ctx.opts.bedrock_role_arn:
        out[POD_IDENTITY_FILE] = header + to_yaml(pod_identity(ctx))
    return out


def readme_steps(ctx: Ctx) -> list[str]:
    fallback = ctx.plan.fallback
    if fallback is None:
        return []
    access = (
        f"Amazon Bedrock model access to `{fallback.model_id}` in {fallback.region} (the gateway's last "
        "tier; a third-party model's first use needs an AWS Marketplace subscription in the account)."
    )
    if ctx.opts.bedrock_role_arn:
        identity = (
            f"IRSA: the role `{ctx.opts.bedrock_role_arn}` trusts the cluster's OIDC provider for service "
            f"account `{ctx.ns}/{service_account_name(ctx)}` and has `{POLICY_FILE}` attached."
        )
    else:
        identity = (
            "EKS Pod Identity for the gateway: `eksctl create addon --cluster "
            f"{ctx.opts.cluster_name} --name eks-pod-identity-agent`, then `eksctl create "
            f"podidentityassociation -f {POD_IDENTITY_FILE}` (role with `{POLICY_FILE}` inline)."
        )
    return [access, identity]
