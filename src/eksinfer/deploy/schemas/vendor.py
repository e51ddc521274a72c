"""Re-vendors the CRD schemas this package validates against, stripped of descriptions.

    python -m eksinfer.deploy.schemas.vendor /path/to/crds   # writes crds/<group>_<kind>_<version>.json

The upstream LeaderWorkerSet and DisaggregatedSet CRDs are over 1 MB each, almost all of it `description`
text copied from PodTemplateSpec; validation needs none of it. We drop every `description` key (but keep a
*property* that happens to be named `description`), keep `x-kubernetes-validations` (CEL rules are read by
`eksinfer.deploy.cel`), and write one compact JSON document per served version:
`{"group", "version", "kind", "source", "schema"}`. Sources and licences are in SOURCES.md next to this file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

# The CRDs render emits objects of; the others in the shared folder are not needed.
WANTED = (
    "leaderworkerset.x-k8s.io_leaderworkersets.yaml",
    "disaggregatedset.x-k8s.io_disaggregatedsets.yaml",
    "karpenter.sh_nodepools.yaml",
    "karpenter.k8s.aws_ec2nodeclasses.yaml",
    "keda.sh_scaledobjects.yaml",
    "keda.sh_triggerauthentications.yaml",
    "inference.networking.k8s.io_inferencepools.yaml",
    "monitoring.coreos.com_servicemonitors.yaml",
    "monitoring.coreos.com_podmonitors.yaml",
    "monitoring.coreos.com_prometheusrules.yaml",
)


def strip_descriptions(node: Any, *, in_properties: bool = False) -> Any:
    """Removes `description` keys, except when the key names a property inside `properties`."""
    if isinstance(node, dict):
        return {
            key: strip_descriptions(value, in_properties=(key == "properties" and not in_properties))
            for key, value in node.items()
            if in_properties or key != "description"
        }
    if isinstance(node, list):
        return [strip_descriptions(item) for item in node]
    return node


def vendor(src: Path, dst: Path) -> list[Path]:
    written: list[Path] = []
    for name in WANTED:
        crd = yaml.safe_load((src / name).read_text(encoding="utf-8"))
        spec = crd["spec"]
        for version in spec["versions"]:
            if not version.get("served", False):
                continue
            doc = {
                "group": spec["group"],
                "version": version["name"],
                "kind": spec["names"]["kind"],
                "source": name,
                "schema": strip_descriptions(version["schema"]["openAPIV3Schema"]),
            }
            out = dst / f"{spec['group']}_{spec['names']['kind']}_{version['name']}.json"
            out.write_text(json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n", encoding="utf-8")
            written.append(out)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m eksinfer.deploy.schemas.vendor CRD_DIR", file=sys.stderr)
        return 2
    for path in vendor(Path(argv[0]), Path(__file__).parent / "crds"):
        print(f"{path.name}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
