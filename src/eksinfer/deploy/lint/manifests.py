"""Reading manifests for lint: every YAML/JSON document under a folder, the pod templates inside workloads,
and the cluster-wide facts rules need (Auto Mode in use? a KV-aware router? which pools taint GPUs?)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from eksinfer import untrusted
from eksinfer.deploy import vllm_flags
from eksinfer.errors import ConfigError, UsageError

Obj = dict[str, Any]
SUFFIXES = (".yaml", ".yml", ".json")
GPU = "nvidia.com/gpu"
UNREADABLE = "__eksinfer_unreadable__"  # key of the placeholder document for a file that does not parse
REFUSED = "__eksinfer_refused__"  # ... for a file refused unread or unexpanded (eksinfer.untrusted bounds)


@dataclass(frozen=True, slots=True)
class Doc:
    file: str
    obj: Obj

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", ""))

    @property
    def api_group(self) -> str:
        return str(self.obj.get("apiVersion", "")).rpartition("/")[0]

    @property
    def name(self) -> str:
        return str((self.obj.get("metadata") or {}).get("name", "")) or "(values)"

    @property
    def oid(self) -> str:
        return f"{self.kind}/{self.name}" if self.kind else f"{Path(self.file).name}"

    @property
    def is_api_object(self) -> bool:
        return "apiVersion" in self.obj and "kind" in self.obj


@dataclass(frozen=True, slots=True)
class PodUnit:
    """One pod template inside a workload; `group_size` pods make one replica (LeaderWorkerSet size)."""

    doc: Doc
    path: str  # field path of the pod template, e.g. spec.template
    template: Obj
    group_size: int = 1
    lws_role: str = "single"  # single | leader | worker
    restart_policy: str | None = None

    @property
    def spec(self) -> Obj:
        return self.template.get("spec") or {}

    @property
    def annotations(self) -> Mapping[str, str]:
        return (self.template.get("metadata") or {}).get("annotations") or {}

    def containers(self) -> Iterator[tuple[int, Obj]]:
        yield from enumerate(self.spec.get("containers") or [])

    def vllm(self) -> tuple[int, Obj] | None:
        return next(((i, c) for i, c in self.containers() if vllm_flags.is_vllm(c)), None)

    def gpus(self, claims: Mapping[str, int]) -> int:
        total = 0
        for _, c in self.containers():
            res = c.get("resources") or {}
            total += int(str((res.get("limits") or {}).get(GPU) or (res.get("requests") or {}).get(GPU) or 0))
        for claim in self.spec.get("resourceClaims") or []:
            total += claims.get(str(claim.get("resourceClaimTemplateName", "")), 0)
        return total


def _load_file(path: Path, root: Path) -> list[Doc]:
    rel = str(path.relative_to(root)) if path != root else path.name
    try:
        text = untrusted.read_text(path, field=None)
        if path.suffix == ".json":
            docs = [untrusted.load_json(text, where=rel, field=None)]
        else:
            docs = untrusted.load_yaml_all(text, where=rel, field=None)
    except untrusted.NotTextError:
        return [Doc(rel, {UNREADABLE: "not UTF-8 text"})]
    except ConfigError as err:  # over the size, alias or nesting bounds: `refused-manifest`
        return [Doc(rel, {REFUSED: str(err)})]
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        # Reported by the `unreadable-manifest` rule (e.g. an unrendered Helm template); lint goes on.
        return [Doc(rel, {UNREADABLE: str(err).splitlines()[0]})]
    return [Doc(rel, d) for d in docs if isinstance(d, dict)]


def load(path: Path) -> list[Doc]:
    if not path.exists():
        raise UsageError(f"{path} does not exist", field="DIR")
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    )
    root = path if path.is_dir() else path.parent
    return [doc for f in files for doc in _load_file(f, root)]


def _lws_units(doc: Doc, spec: Mapping[str, Any], at: str) -> list[PodUnit]:
    lwt = spec.get("leaderWorkerTemplate") or {}
    size, policy = int(lwt.get("size", 1)), lwt.get("restartPolicy")
    out = []
    if "leaderTemplate" in lwt:
        out.append(
            PodUnit(
                doc,
                f"{at}.leaderWorkerTemplate.leaderTemplate",
                lwt["leaderTemplate"],
                size,
                "leader",
                policy,
            )
        )
    if "workerTemplate" in lwt:
        role = "worker" if "leaderTemplate" in lwt else "leader"
        out.append(
            PodUnit(
                doc, f"{at}.leaderWorkerTemplate.workerTemplate", lwt["workerTemplate"], size, role, policy
            )
        )
    return out


def pod_units(doc: Doc) -> list[PodUnit]:
    spec = doc.obj.get("spec") or {}
    kind = doc.kind
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job") and "template" in spec:
        return [PodUnit(doc, "spec.template", spec["template"])]
    if kind == "CronJob":
        return [
            PodUnit(
                doc,
                "spec.jobTemplate.spec.template",
                ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {},
            )
        ]
    if kind == "Pod":
        return [PodUnit(doc, "", {"metadata": doc.obj.get("metadata") or {}, "spec": spec})]
    if kind == "LeaderWorkerSet":
        return _lws_units(doc, spec, "spec")
    if kind == "DisaggregatedSet":
        return [
            u
            for i, r in enumerate(spec.get("roles") or [])
            for u in _lws_units(doc, r.get("spec") or {}, f"spec.roles[{i}].spec")
        ]
    return []


@dataclass
class Tree:
    docs: list[Doc]
    units: list[PodUnit] = field(init=False)

    def __post_init__(self) -> None:
        self.units = [u for d in self.docs if d.is_api_object for u in pod_units(d)]

    def of_kind(self, kind: str, group: str | None = None) -> list[Doc]:
        return [d for d in self.docs if d.kind == kind and (group is None or d.api_group == group)]

    @cached_property
    def claim_gpus(self) -> dict[str, int]:
        out = {}
        for d in self.of_kind("ResourceClaimTemplate"):
            reqs = (((d.obj.get("spec") or {}).get("spec") or {}).get("devices") or {}).get("requests") or []
            out[d.name] = sum(int((r.get("exactly") or r).get("count", 1)) for r in reqs)
        return out

    @cached_property
    def nodepools(self) -> list[Doc]:
        return self.of_kind("NodePool", "karpenter.sh")

    @staticmethod
    def nodeclass_group(pool: Doc) -> str:
        spec = ((pool.obj.get("spec") or {}).get("template") or {}).get("spec") or {}
        return str((spec.get("nodeClassRef") or {}).get("group", ""))

    @cached_property
    def auto_mode(self) -> bool:
        if any(self.nodeclass_group(p) == "eks.amazonaws.com" for p in self.nodepools):
            return True
        if self.of_kind("NodeClass", "eks.amazonaws.com"):
            return True
        text = json.dumps([d.obj for d in self.docs if not d.is_api_object])
        return '"eks.amazonaws.com/compute-type"' in text and '"auto"' in text

    @cached_property
    def karpenter(self) -> bool:
        return any(self.nodeclass_group(p) == "karpenter.k8s.aws" for p in self.nodepools) or bool(
            self.of_kind("EC2NodeClass")
        )

    @cached_property
    def gpu_tainted_pools(self) -> bool:
        text = json.dumps(
            [d.obj for d in self.nodepools] + [d.obj for d in self.docs if d.kind == "ClusterConfig"]
        )
        return f'"key": "{GPU}"' in text

    @cached_property
    def kv_router(self) -> str | None:
        """'eksinfer' (precise KV-aware gateway), 'gaie' (InferencePool / prefix scorer), or None."""
        for d in self.of_kind("ConfigMap"):
            for value in (d.obj.get("data") or {}).values():
                if "prefix-cache-scorer" in str(value):
                    return "gaie"
                try:
                    cfg = untrusted.load_yaml(str(value), where="ConfigMap data", field=None)
                except (yaml.YAMLError, ConfigError):
                    continue
                if isinstance(cfg, dict) and "endpoints" in cfg:
                    preset = (cfg.get("routing") or {}).get("preset", "kv-aware")
                    if preset in ("kv-aware", "approx-prefix"):
                        return "eksinfer" if preset == "kv-aware" else "gaie"
        return "gaie" if self.of_kind("InferencePool") else None
