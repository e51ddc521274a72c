"""Lint rules on prefill/decode disaggregation: vLLM engines with a NixlConnector `--kv-transfer-config`.

A P/D engine's role comes from its `kv_role` (kv_producer: prefill, kv_consumer: decode) or, for kv_both,
from the pod's `eksinfer.io/role` label. Gateways are judged only when the tree has an eksinfer gateway
config (a ConfigMap whose YAML has `endpoints`); its Kubernetes discoveries select pods by equality label
selectors, and its `disaggregation:` section names the prefill and decode pools per model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from eksinfer import untrusted
from eksinfer.deploy import vllm_flags
from eksinfer.deploy.lint.core import at, rule
from eksinfer.deploy.lint.manifests import Doc, PodUnit, Tree
from eksinfer.errors import ConfigError

Hit = tuple[Doc, str, str, str]
EFA = "vpc.amazonaws.com/efa"
_ROLES = {"kv_producer": "prefill", "kv_consumer": "decode"}


def _labels(unit: PodUnit) -> dict[str, str]:
    labels = (unit.template.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def pd_role(unit: PodUnit) -> str | None:
    """'prefill', 'decode' or 'both' for a serving vLLM pod with a NixlConnector; None otherwise."""
    found = unit.vllm()
    if found is None or unit.lws_role == "worker":
        return None
    raw = vllm_flags.value(vllm_flags.container_argv(found[1]), "kv-transfer-config")
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(config, dict) or config.get("kv_connector") != "NixlConnector":
        return None
    role = _ROLES.get(str(config.get("kv_role")))
    if role is None:
        label = _labels(unit).get("eksinfer.io/role")
        role = label if label in ("prefill", "decode") else "both"
    return role


def _pd_units(tree: Tree) -> list[tuple[PodUnit, str]]:
    return [(u, r) for u in tree.units if (r := pd_role(u)) is not None]


@rule("pd-without-efa", "warning", "prefill/decode engines without EFA interfaces")
def pd_without_efa(tree: Tree) -> Iterator[Hit]:
    for unit, _ in _pd_units(tree):
        i, c = unit.vllm() or (0, {})
        if EFA not in ((c.get("resources") or {}).get("limits") or {}):
            yield (
                unit.doc,
                at(unit, f"spec.containers[{i}].resources.limits"),
                "NIXL moves every remote prefill's KV from the prefill pod to the decode pod; on different "
                "nodes without EFA it falls back to TCP on the pod network (one flow about 10 Gbit/s against "
                "400 Gbit/s of EFA per p5 GPU), so a long prompt's transfer takes seconds and eats the TTFT "
                "P/D was meant to save",
                f"request {EFA} on prefill and decode pods (their GPUs' share of the node's interfaces), or "
                "keep each prefill pod on the node of the decode pods it serves",
            )


def _gateway_configs(tree: Tree) -> Iterator[tuple[Doc, dict[str, Any]]]:
    for doc in tree.of_kind("ConfigMap"):
        for value in (doc.obj.get("data") or {}).values():
            try:
                cfg = untrusted.load_yaml(str(value), where="ConfigMap data", field=None)
            except (yaml.YAMLError, ConfigError):
                continue
            if isinstance(cfg, dict) and isinstance(cfg.get("endpoints"), dict):
                yield doc, cfg


def _selector(text: object) -> dict[str, str] | None:
    """An equality label selector "k=v,k2=v2"; None for anything else (set-based: not judged)."""
    out: dict[str, str] = {}
    for part in str(text or "").split(","):
        key, eq, value = part.partition("=")
        if not eq or key.endswith("!") or not key.strip():
            return None
        out[key.strip()] = value.strip().lstrip("=")
    return out


def _pools_of(cfg: Mapping[str, Any], labels: dict[str, str]) -> set[str]:
    """The gateway pools whose Kubernetes discovery selects a pod with `labels`."""
    found = (cfg.get("endpoints") or {}).get("kubernetes") or []
    pools = set()
    for d in found if isinstance(found, list) else [found]:
        if not isinstance(d, dict):
            continue
        wanted = _selector(d.get("label_selector"))
        if wanted is not None and wanted.items() <= labels.items():
            pools.add(str(d.get("pool", "default")))
    return pools


def gateway_speaks_pd() -> bool:
    """Whether this eksinfer's gateway has a `disaggregation:` section to configure (eksinfer.gateway.pd)."""
    from eksinfer.gateway.config import GatewayConfig

    return "disaggregation" in GatewayConfig.model_fields


@rule("pd-gateway-misses-a-role", "warning", "a gateway that does not run prefill/decode over both roles")
def pd_gateway_misses_a_role(tree: Tree) -> Iterator[Hit]:
    units = _pd_units(tree)
    prefill = [u for u, r in units if r == "prefill"]
    decode = [u for u, r in units if r == "decode"]
    if not prefill or not decode:
        return
    for doc, cfg in _gateway_configs(tree):
        p_pools = set().union(*(_pools_of(cfg, _labels(u)) for u in prefill))
        d_pools = set().union(*(_pools_of(cfg, _labels(u)) for u in decode))
        if not p_pools:
            yield (
                doc,
                "data.endpoints.kubernetes",
                "no discovery selects the prefill pods: the gateway sends every request to decode pods, "
                "which prefill it themselves, and the prefill pods (and their GPUs) sit idle",
                "add a kubernetes discovery whose label_selector matches the prefill pods, with its own "
                "`pool:`, and a `disaggregation:` profile naming it",
            )
            continue
        if not gateway_speaks_pd():  # nothing more to configure in a gateway without eksinfer.gateway.pd
            continue
        profiles = cfg.get("disaggregation") or {}
        wired = isinstance(profiles, dict) and any(
            isinstance(p, dict) and p.get("prefill_pool") in p_pools and p.get("decode_pool") in d_pools
            for p in profiles.values()
        )
        if not wired:
            yield (
                doc,
                "data.disaggregation",
                "the gateway discovers the prefill pods but no `disaggregation:` profile sends prefills to "
                "them and decodes to the decode pods: requests land on either role without the NIXL steps",
                "add `disaggregation: {MODEL: {prefill_pool: <prefill pool>, decode_pool: <decode pool>}}`",
            )
