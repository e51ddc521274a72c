"""The README written into each rendered tree: what the plan is, what to install first, how to apply."""

from __future__ import annotations

from eksinfer.deploy import bedrock
from eksinfer.deploy.addons import mig_config_name
from eksinfer.deploy.context import Ctx


def _node_steps(ctx: Ctx, multi: bool) -> list[str]:
    """How the GPU nodes come to exist in this provisioning mode."""
    steps: list[str] = []
    if ctx.mode == "karpenter":
        steps.append(
            "Karpenter >= 1.4 with its CRDs; subnets and security groups tagged "
            f"`karpenter.sh/discovery: {ctx.opts.cluster_name}`; node role "
            f"`KarpenterNodeRole-{ctx.opts.cluster_name}`."
        )
        if ctx.opts.capacity_reservations:
            steps.append(
                "Capacity reservations: Karpenter >= 1.3 with the reserved-capacity feature gate on "
                "(`--set settings.featureGates.reservedCapacity=true` where it is not the default), and the "
                "Karpenter controller role allowed `ec2:DescribeCapacityReservations`."
            )
        if ctx.opts.placement_group:
            steps.append(
                f"The cluster placement group `{ctx.opts.placement_group}` (`aws ec2 "
                f"create-placement-group --group-name {ctx.opts.placement_group} --strategy cluster`); it "
                "pins the nodes to one zone."
            )
        if multi:
            steps.append(
                "AWS EFA device plugin (`helm install aws-efa-k8s-device-plugin "
                "eks/aws-efa-k8s-device-plugin "
                "--set tolerations[0].operator=Exists`)."
            )
    elif ctx.mode == "auto-mode":
        steps.append(
            "An EKS Auto Mode cluster (NVIDIA driver, device plugin and EFA plugin are built in). A custom "
            "NodeClass needs an access entry of type EC2 with AmazonEKSAutoNodePolicy for its role."
        )
    else:
        steps.append("Create the GPU node group: `eksctl create nodegroup -f cluster/eksctl-nodegroup.yaml`.")
        steps.append(
            "Cluster Autoscaler: `helm install cluster-autoscaler autoscaler/cluster-autoscaler -n "
            "kube-system "
            "-f helm/cluster-autoscaler-values.yaml`."
        )
    return steps


def _prerequisites(ctx: Ctx) -> list[str]:
    p = ctx.plan
    multi = any(r.engine.nodes_per_replica > 1 for r in p.roles)
    # the EFA device plugin: multi-node groups, and P/D pods that pull KV between nodes
    steps = _node_steps(ctx, multi or (p.mode == "disaggregated" and ctx.efa_interfaces > 0))
    if p.nodes.mig_profile and (p.stack is None or p.stack.gpu_operator):
        steps.append(
            f"The MIG layouts the GPU Operator reads ({p.nodes.mig_profile}): `kubectl create namespace "
            f"gpu-operator && kubectl apply -f nodes/configmap-{mig_config_name(ctx)}.yaml`."
        )
    if p.stack is None or p.stack.gpu_operator:  # phase 1 of the migration path has none
        steps.append(
            "NVIDIA GPU Operator: `helm install gpu-operator nvidia/gpu-operator -n gpu-operator "
            "--create-namespace "
            "-f helm/gpu-operator-values.yaml`."
        )
    if p.nodes.needs_dra:
        steps.append(
            "NVIDIA DRA driver: `helm install nvidia-dra-driver-gpu nvidia/nvidia-dra-driver-gpu "
            "-n nvidia-dra-driver-gpu "
            "--create-namespace -f helm/nvidia-dra-driver-gpu-values.yaml` (Kubernetes >= 1.34)."
        )
    if multi:
        steps.append(
            "LeaderWorkerSet >= 0.10 (`helm install lws oci://registry.k8s.io/lws/charts/lws -n "
            "lws-system --create-namespace`)."
        )
    steps.append(
        "KEDA >= 2.16 and kube-prometheus-stack (release name "
        f"`{ctx.opts.prometheus_release}`, Grafana sidecar watching all namespaces)."
    )
    if ctx.opts.expose == "httproute":
        steps.append(
            f"Gateway API CRDs and the Gateway `{ctx.opts.gateway_ref}` with an HTTPS listener (its "
            f"certificateRefs hold the TLS certificate) that allows routes from namespace `{ctx.ns}`."
        )
    elif ctx.opts.expose == "alb":
        steps.append(
            "AWS Load Balancer Controller >= 2.7 (IngressClass `alb`); the ACM certificate "
            f"`{ctx.opts.certificate_arn}` in region {ctx.plan.instance.region}."
        )
    if ctx.opts.model_s3_uri:
        steps.append(
            f"An EKS Pod Identity association for service account `{ctx.name}-engine` that can read "
            f"`{ctx.opts.model_s3_uri}`."
        )
    else:
        steps.append(
            f"A ReadWriteMany StorageClass `{ctx.opts.model_cache_storage_class}` (EFS or FSx for "
            "Lustre CSI) "
            "for the shared model cache."
        )
    if p.on_prem and p.on_prem.replicas:
        steps.append(
            "EKS Hybrid Nodes with GPUs, the NVIDIA driver and container toolkit installed on the hosts, "
            "and a CNI for them (Cilium or Calico). The tree pins its own device plugin to them: keep the "
            "GPU Operator's off with `kubectl label nodes -l eks.amazonaws.com/compute-type=hybrid "
            "nvidia.com/gpu.deploy.device-plugin=false`."
        )
    steps.append(
        f"The gateway image `{ctx.opts.gateway_image}`: build it from the eksinfer repository, push it where "
        "the cluster can pull it (or render with `--gateway-image`)."
    )
    steps.extend(bedrock.readme_steps(ctx))
    steps.append(
        f"Optional: a Secret `{ctx.opts.hf_token_secret}` (key `token`) for gated Hugging Face models."
    )
    return steps


def _reach(ctx: Ctx) -> list[str]:
    """How to reach the gateway from outside once applied (or nothing: port-forward only)."""
    if ctx.opts.expose == "alb":
        return [
            f"kubectl -n {ctx.ns} get ingress {ctx.name}-gateway "
            "-o jsonpath='{.status.loadBalancer.ingress[0].hostname}'   # then https://HOST/v1"
        ]
    if ctx.opts.expose == "httproute":
        return [
            f"kubectl -n {ctx.ns} get httproute {ctx.name}-gateway   # Accepted by {ctx.opts.gateway_ref}"
        ]
    return []


def tree_readme(ctx: Ctx, objects: list[str], files: list[str]) -> str:
    p = ctx.plan
    roles = ", ".join(
        f"{r.name} x{r.replicas} (TP {r.engine.tensor_parallel_size}, PP {r.engine.pipeline_parallel_size}, "
        f"{r.engine.nodes_per_replica} node(s) each)"
        for r in p.roles
    )
    lines = [
        f"# {p.name}: {p.model.hf_id} on {p.instance.type} ({p.nodes.provisioning})",
        "",
        f"Generated by `eksinfer render`. Tier {p.tier}, {p.mode}; roles: {roles}; gateway routing "
        f"`{p.routing.gateway_preset}`; namespace `{ctx.ns}`.",
        "",
        "## Install first",
        "",
        *[f"{i}. {s}" for i, s in enumerate(_prerequisites(ctx), 1)],
        "",
        "## Apply",
        "",
        "```sh",
        "kubectl apply -k .",
        f"kubectl -n {ctx.ns} port-forward svc/{ctx.name}-gateway 8000:80",
        *_reach(ctx),
        "```",
        "",
        "Check first with `eksinfer lint .` (the manifests) and `eksinfer doctor . --context NAME` "
        "(the cluster).",
        "",
        "## Files",
        "",
        *[f"- `{f}`" for f in [*objects, *files]],
        "",
    ]
    return "\n".join(lines)
