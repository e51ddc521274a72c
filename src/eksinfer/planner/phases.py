"""The migration path as stacks: `plan --phase N` (1, 1.5, 2, 3, 4) and `--from M` (what changes).

A team moves from a first managed deployment to the full stack one step at a time; each phase adds parts to
the one before (Karpenter replaces Auto Mode in phase 2):

    1    EKS Auto Mode GPU nodes, vLLM engines (aggregated, one node per replica), load-based KEDA
         autoscaling, round-robin routing, Amazon Bedrock as the fallback tier
    1.5  + NVIDIA GPU Operator (device plugin off by node label where the node brings its own)
         + KV-cache-aware routing
    2    Karpenter instead of Auto Mode; prefill/decode disaggregation, LeaderWorkerSet multi-node engines
         and MIG slices become options the search may choose
    3    + EKS Hybrid Nodes on-prem pool (--on-prem) + the three-tier cascade on-prem -> EKS -> Bedrock
    4    + SLO-based autoscaling: KEDA also scales on p90 TTFT against the SLO

A phase is planned by the normal search under the phase's limits (`Constraints.phase`), and the plan carries
a `stack` block the renderer reads. A part this build cannot render yet makes its phase (and every later one)
an error naming it, never a silent partial stack; `--without NAME` leaves out an optional part on request
(a team without Bedrock access), and the plan says so. `diff_stacks` renders two plans in memory and lists
the objects and files added, removed and changed between them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from eksinfer.errors import UsageError

if TYPE_CHECKING:
    from eksinfer.planner.request import PlanRequest
    from eksinfer.planner.schema import Plan, PlanStack

PHASES = ("1", "1.5", "2", "3", "4")
PhaseName = Literal["1", "1.5", "2", "3", "4"]


def _bedrock_missing() -> str | None:
    """None when this build renders a Bedrock fallback tier: the gateway's Bedrock pool (issue 13b), a
    gateway config with `pools` and per-model cascades (13a), and the plan's fallback field; else what is
    missing."""
    from eksinfer.gateway.config import GatewayConfig
    from eksinfer.planner.schema import Plan

    if importlib.util.find_spec("eksinfer.gateway.bedrock") is None:
        return "the gateway has no Bedrock pool (eksinfer.gateway.bedrock) in this build"
    if not {"pools", "models"} <= set(GatewayConfig.model_fields):
        return "the gateway config has no pools and per-model cascades in this build"
    if "fallback" not in Plan.model_fields:
        return "the plan has no fallback tier to render"
    return None


def _cascade_missing() -> str | None:
    """None when the renderer puts the on-prem pool, the cloud pool and Bedrock in one cascade."""
    bedrock = _bedrock_missing()
    if bedrock is not None:
        return bedrock
    if importlib.util.find_spec("eksinfer.deploy.bedrock") is None:
        return "the renderer writes no Bedrock tier (eksinfer.deploy.bedrock) in this build"
    return None


def _always() -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    phase: str
    what: str
    missing: Callable[[], str | None] = _always  # None: this build renders it
    optional: bool = False  # may be left out with --without
    replaces: str | None = None


COMPONENTS = (
    Component("auto-mode", "1", "EKS Auto Mode GPU nodes: AWS runs the driver, device plugin and scaling"),
    Component("vllm", "1", "vLLM engines, aggregated, one node per replica"),
    Component("load-autoscaling", "1", "KEDA scales engines on running / waiting requests and KV-cache use"),
    Component(
        "bedrock-fallback", "1", "Amazon Bedrock serves when the EKS pool cannot", _bedrock_missing, True
    ),
    Component("gpu-operator", "1.5", "NVIDIA GPU Operator (DCGM exporter, GFD); device plugin off by label"),
    Component("kv-aware-routing", "1.5", "the gateway routes by predicted KV-cache hits"),
    Component("karpenter", "2", "Karpenter NodePool + EC2NodeClass", replaces="auto-mode"),
    Component("pd-lws-mig", "2", "P/D disaggregation, LeaderWorkerSet multi-node engines and MIG allowed"),
    Component("hybrid-nodes", "3", "EKS Hybrid Nodes on-prem pool (--on-prem)", optional=True),
    Component("cascade", "3", "three-tier cascade: on-prem -> EKS -> Bedrock", _cascade_missing, True),
    Component("slo-autoscaling", "4", "KEDA also scales on p90 TTFT against the SLO"),
)
OPTIONAL = tuple(c.name for c in COMPONENTS if c.optional)


def _rank(phase: str) -> int:
    return PHASES.index(phase)


def check_phase(phase: str, *, field: str = "--phase") -> PhaseName:
    if phase not in PHASES:
        raise UsageError(f"must be one of {', '.join(PHASES)}, got {phase!r}", field=field)
    return cast(PhaseName, phase)


def components(phase: str, without: tuple[str, ...] = ()) -> list[Component]:
    """The parts of `phase`'s stack, in the order they arrive; replaced and left-out parts dropped."""
    upto = [c for c in COMPONENTS if _rank(c.phase) <= _rank(check_phase(phase))]
    replaced = {c.replaces for c in upto if c.replaces}
    return [c for c in upto if c.name not in replaced and c.name not in without]


def early(phase: str | None) -> bool:
    """Phases 1 and 1.5: Auto Mode, one node per replica, aggregated, no MIG."""
    return phase is not None and _rank(phase) < _rank("2")


def slo_autoscaling(phase: str | None) -> bool:
    return phase is None or _rank(phase) >= _rank("4")


def check_request(request: PlanRequest, phase: str, without: tuple[str, ...]) -> None:
    """Reject a phase this build cannot render, or flags that belong to another phase (one line, the flag)."""
    check_phase(phase)
    for name in without:
        if name not in OPTIONAL:
            raise UsageError(
                f"{name!r} cannot be left out; optional parts: {', '.join(OPTIONAL)}", field="--without"
            )
    for comp in components(phase, without):
        reason = comp.missing()
        if reason is not None:
            hint = f"; plan it without with --without {comp.name}" if comp.optional else ""
            raise UsageError(
                f"phase {phase} includes {comp.name} (phase {comp.phase}: {comp.what}), which this build "
                f"cannot render yet: {reason}{hint}",
                field="--phase",
            )
    c = request.constraints
    if early(phase):
        block = c.capacity_type == "capacity-block"
        for flag, on in (
            ("--needs-mig", c.needs_mig),
            ("--custom-ami", c.custom_ami),
            ("--capacity-type", block),
        ):
            if on:
                raise UsageError(f"needs Karpenter nodes, which arrive in phase 2 (not {phase})", field=flag)
    if c.needs_dra:
        raise UsageError("DRA runs on managed node groups, outside the migration path", field="--needs-dra")
    hybrid = any(comp.name == "hybrid-nodes" for comp in components(phase, without))
    if c.on_prem is not None and not hybrid:
        raise UsageError(f"hybrid on-prem nodes arrive in phase 3 (not {phase})", field="--on-prem")
    if hybrid and c.on_prem is None:
        raise UsageError(
            f"phase {phase} adds EKS Hybrid Nodes: give --on-prem GPU:COUNT (or --without hybrid-nodes)",
            field="--on-prem",
        )


def normalize(request: PlanRequest) -> PlanRequest:
    """One switch for the Bedrock tier under --phase: `--without bedrock-fallback` turns the plan's fallback
    off, and a fallback already turned off (--no-bedrock-fallback, where the build has it) counts as left
    out."""
    c = request.constraints
    if c.phase is None:
        return request
    names = {f.name for f in dataclasses.fields(c)}
    if "bedrock_fallback" not in names:
        return request
    if getattr(c, "bedrock_fallback", True) is False and "bedrock-fallback" not in c.without:
        c = dataclasses.replace(c, without=(*c.without, "bedrock-fallback"))
    if "bedrock-fallback" in c.without:
        off: dict[str, Any] = {"bedrock_fallback": False}
        c = dataclasses.replace(c, **off)
    return dataclasses.replace(request, constraints=c)


def check_plan(plan: Plan) -> None:
    """A phase whose Bedrock tier found no model to map is refused, not rendered without it."""
    if plan.stack is None or "bedrock-fallback" not in plan.stack.components:
        return
    if getattr(plan, "fallback", None) is None:
        raise UsageError(
            f"phase {plan.stack.phase} includes bedrock-fallback, but no Amazon Bedrock model is mapped to "
            f"{plan.model.id}; name one with --bedrock-model ID, or leave it out with --without "
            "bedrock-fallback",
            field="--phase",
        )


def stack(phase: str, without: tuple[str, ...]) -> PlanStack:
    from eksinfer.planner.schema import PlanStack

    return PlanStack(
        phase=check_phase(phase),
        components=[c.name for c in components(phase, without)],
        gpu_operator=_rank(phase) >= _rank("1.5"),
        autoscaling="slo" if slo_autoscaling(phase) else "load",
        without=sorted(without),
    )


# -- what changes between two phases ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    kind: Literal["added", "removed", "changed"]
    path: str  # file in the rendered tree, e.g. nodes/nodepool-llama-gpu.yaml
    detail: str = ""  # for an API object: its kind/name; for a change: the fields that differ


def _leaves(a: Any, b: Any, prefix: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            _leaves(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key), out)
    elif a != b:
        out.append(prefix or "(whole)")


def _fields(a: Any, b: Any, limit: int = 4) -> str:
    paths: list[str] = []
    _leaves(a, b, "", paths)
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _label(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"


def diff_trees(old: Any, new: Any) -> list[Change]:
    """Objects and files of two RenderedTrees: added, removed, changed (with the fields that differ)."""
    changes: list[Change] = []
    for path in sorted(set(old.objects) | set(new.objects)):
        a, b = old.objects.get(path), new.objects.get(path)
        if a is None:
            changes.append(Change("added", path, _label(b)))
        elif b is None:
            changes.append(Change("removed", path, _label(a)))
        elif a != b:
            changes.append(Change("changed", path, _fields(a, b)))
    for path in sorted(set(old.files) | set(new.files)):
        if path == "README.md":
            continue  # it lists the other files; its changes are theirs
        a_text, b_text = old.files.get(path), new.files.get(path)
        if a_text is None:
            changes.append(Change("added", path))
        elif b_text is None:
            changes.append(Change("removed", path))
        elif a_text != b_text:
            changes.append(Change("changed", path, "contents"))
    return changes


def diff_stacks(old: Plan, new: Plan) -> list[Change]:
    """Render both plans in memory (default render options) and compare the trees."""
    from eksinfer.deploy.render import build_tree

    return diff_trees(build_tree(old), build_tree(new))


def plan_changes(old: Plan, new: Plan) -> list[str]:
    """The plan-level differences a reader checks first: nodes, engines, routing, cost."""
    out = []
    pairs = (
        ("provisioning", old.nodes.provisioning, new.nodes.provisioning),
        ("mode", old.mode, new.mode),
        (
            "instances",
            f"{old.nodes.total_nodes} x {old.instance.type}",
            f"{new.nodes.total_nodes} x {new.instance.type}",
        ),
        ("MIG", old.nodes.mig_profile or "none", new.nodes.mig_profile or "none"),
        ("routing", old.routing.strategy, new.routing.strategy),
        (
            "autoscaling",
            old.stack.autoscaling if old.stack else "slo",
            new.stack.autoscaling if new.stack else "slo",
        ),
        (
            "on-prem replicas",
            old.on_prem.replicas if old.on_prem else 0,
            new.on_prem.replicas if new.on_prem else 0,
        ),
        ("cost", f"${old.cost.monthly_usd:,.0f}/month", f"${new.cost.monthly_usd:,.0f}/month"),
    )
    for name, a, b in pairs:
        if a != b:
            out.append(f"{name}: {a} -> {b}")
    return out
