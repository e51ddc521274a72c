"""Lint rules on pod templates (engines): GPUs, parallelism, shared memory, probes, tolerations, images."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from functools import cache

from eksinfer.deploy import vllm_flags
from eksinfer.deploy.lint.core import at, rule
from eksinfer.deploy.lint.manifests import GPU, Doc, PodUnit, Tree

Hit = tuple[Doc, str, str, str]
MIN_STARTUP_S = 600  # GAIE's reference vLLM pod allows 600 s (startupProbe failureThreshold 600, period 1 s)
MOE_NAMES = re.compile(
    r"mixtral|deepseek-(v2|v3|r1)|kimi-k2|qwen[23]-[^/]*-a\d+b|gpt-oss|glm-4\.[56]|glm-5|llama-4|dbrx|minimax"
)


def _parallel(argv: list[str]) -> tuple[int, int, int]:
    def num(flag: str) -> int:
        v = vllm_flags.value(argv, flag)
        return int(v) if v and v.isdigit() else 1

    return num("tensor-parallel-size"), num("pipeline-parallel-size"), num("data-parallel-size")


def _serving(tree: Tree) -> Iterator[tuple[PodUnit, int, list[str]]]:
    """(unit, container index, argv) of every vLLM container that serves (not LWS workers)."""
    for unit in tree.units:
        found = unit.vllm()
        if found is not None and unit.lws_role != "worker":
            yield unit, found[0], vllm_flags.container_argv(found[1])


def _model(argv: list[str]) -> str:
    """`vllm serve MODEL`, `--model MODEL`, or the image entrypoint's first positional argument."""
    if "serve" in argv and argv.index("serve") + 1 < len(argv):
        return argv[argv.index("serve") + 1]
    if flag := vllm_flags.value(argv, "model"):
        return flag
    return argv[0] if argv and not argv[0].startswith("-") else "the model"


@rule("tp-without-shm", "error", "tensor parallelism without a /dev/shm memory volume")
def tp_without_shm(tree: Tree) -> Iterator[Hit]:
    for unit in tree.units:
        found = unit.vllm()
        if found is None or (unit.gpus(tree.claim_gpus) <= 1 and unit.group_size == 1):
            continue
        i, c = found
        memory_vols = {
            v.get("name")
            for v in unit.spec.get("volumes") or []
            if (v.get("emptyDir") or {}).get("medium") == "Memory"
        }
        if not any(
            m.get("mountPath") == "/dev/shm" and m.get("name") in memory_vols
            for m in c.get("volumeMounts") or []
        ):
            yield (
                unit.doc,
                at(unit, f"spec.containers[{i}].volumeMounts"),
                "the container runtime gives /dev/shm 64 MiB; NCCL and vLLM's tensor-parallel "
                "workers exchange "
                "data there and crash or hang with 'Bus error' once it fills",
                "add an emptyDir {medium: Memory, sizeLimit: 16Gi} volume mounted at /dev/shm",
            )


def _budget_s(probe: dict[str, object]) -> int:
    period, failures = int(str(probe.get("periodSeconds", 10))), int(str(probe.get("failureThreshold", 3)))
    return int(str(probe.get("initialDelaySeconds", 0))) + period * failures


@rule("probe-kills-loading-model", "error", "probes restart the pod before the model has loaded")
def probe_kills_loading_model(tree: Tree) -> Iterator[Hit]:
    for unit, i, _argv in _serving(tree):
        c = (unit.spec.get("containers") or [])[i]
        probe_name = (
            "startupProbe" if "startupProbe" in c else "livenessProbe" if "livenessProbe" in c else None
        )
        if probe_name is None:
            continue
        load = unit.annotations.get("eksinfer.io/load-time-s")
        need = max(MIN_STARTUP_S, math.ceil(1.5 * float(load))) if load else MIN_STARTUP_S
        budget = _budget_s(c[probe_name])
        if budget < need:
            yield (
                unit.doc,
                at(unit, f"spec.containers[{i}].{probe_name}"),
                f"the probe gives the engine {budget} s to start; downloading weights, loading them "
                "and capturing "
                f"CUDA graphs takes longer (need >= {need} s), so the kubelet kills it in a restart loop",
                f"use a startupProbe on /health with periodSeconds x failureThreshold >= {need}",
            )


@rule("missing-gpu-toleration", "error", "GPU pod without a toleration for the GPU taint")
def missing_gpu_toleration(tree: Tree) -> Iterator[Hit]:
    for unit in tree.units:
        if unit.gpus(tree.claim_gpus) == 0:
            continue
        tols = unit.spec.get("tolerations") or []
        if not any(t.get("key") == GPU or (t.get("operator") == "Exists" and not t.get("key")) for t in tols):
            yield (
                unit.doc,
                at(unit, "spec.tolerations"),
                "GPU nodes carry the nvidia.com/gpu:NoSchedule taint (Auto Mode accelerated pools, "
                "our NodePools); "
                "without a toleration the pod stays Pending and the autoscaler buys nodes it cannot use",
                "add {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}",
            )


@rule("gpu-count-mismatch", "error", "GPUs requested do not match TP x PP x DP")
def gpu_count_mismatch(tree: Tree) -> Iterator[Hit]:
    for unit, i, argv in _serving(tree):
        gpus = unit.gpus(tree.claim_gpus) * unit.group_size
        tp, pp, dp = _parallel(argv)
        if gpus and gpus != tp * pp * dp:
            yield (
                unit.doc,
                at(unit, f"spec.containers[{i}].resources"),
                f"{gpus} GPU(s) per replica but TP {tp} x PP {pp} x DP {dp} = {tp * pp * dp}: vLLM "
                "either fails to "
                "start or leaves paid GPUs idle",
                "request exactly TP x PP x DP GPUs per replica (per pod x LeaderWorkerSet size)",
            )


@cache
def _moe_catalog() -> dict[str, bool]:
    try:
        from eksinfer.catalog import get_model, list_models

        return {get_model(m).hf_id.lower(): get_model(m).is_moe for m in list_models()}
    except Exception:  # the catalog is optional for lint; fall back to names
        return {}


@rule("moe-without-expert-parallel", "warning", "MoE model sharded without expert parallelism")
def moe_without_ep(tree: Tree) -> Iterator[Hit]:
    for unit, i, argv in _serving(tree):
        model = _model(argv).lower()
        moe = _moe_catalog().get(model, bool(MOE_NAMES.search(model)))
        tp, _pp, dp = _parallel(argv)
        if moe and tp * dp > 1 and not vllm_flags.has(argv, "enable-expert-parallel"):
            yield (
                unit.doc,
                at(unit, f"spec.containers[{i}].args"),
                f"{model} is a mixture-of-experts model; without expert parallelism every GPU holds "
                "a slice of every "
                "expert and all-reduces each layer, instead of whole experts with all-to-all",
                "add --enable-expert-parallel",
            )


@rule("multi-node-without-efa", "error", "multi-node engine without EFA devices")
def multi_node_without_efa(tree: Tree) -> Iterator[Hit]:
    for unit in tree.units:
        if unit.group_size <= 1 or unit.vllm() is None:
            continue
        for i, c in unit.containers():
            res = c.get("resources") or {}
            if "vpc.amazonaws.com/efa" not in (res.get("limits") or {}):
                yield (
                    unit.doc,
                    at(unit, f"spec.containers[{i}].resources.limits"),
                    "pipeline stages across nodes talk over TCP without EFA: NCCL falls back to sockets at a "
                    "fraction of the bandwidth and the group's latency collapses",
                    "request vpc.amazonaws.com/efa (all of the instance's interfaces) and set "
                    "FI_PROVIDER=efa",
                )


@rule("no-model-cache", "warning", "every pod downloads the weights")
def no_model_cache(tree: Tree) -> Iterator[Hit]:
    for unit, i, argv in _serving(tree):
        model = _model(argv)
        if model.startswith(("s3://", "/")) or vllm_flags.value(argv, "load-format") == "runai_streamer":
            continue
        c = (unit.spec.get("containers") or [])[i]
        env = {e.get("name"): str(e.get("value", "")) for e in c.get("env") or []}
        cache_dir = (
            vllm_flags.value(argv, "download-dir")
            or env.get("HF_HOME")
            or env.get("HF_HUB_CACHE")
            or "/root/.cache/huggingface"
        )
        durable = {v.get("name") for v in unit.spec.get("volumes") or [] if not ({"emptyDir"} & set(v))}
        mounted = any(
            cache_dir.startswith(str(m.get("mountPath", "")).rstrip("/") + "/")
            or cache_dir == m.get("mountPath")
            for m in c.get("volumeMounts") or []
            if m.get("name") in durable
        )
        if not mounted:
            yield (
                unit.doc,
                at(unit, f"spec.containers[{i}].volumeMounts"),
                f"{model} downloads to {cache_dir} inside the pod: every new replica pulls the full "
                "weights from "
                "Hugging Face, which dominates cold start and scale-out",
                "mount a shared ReadWriteMany volume (EFS/FSx) at HF_HOME, or stream from S3 with "
                "--load-format runai_streamer",
            )


@rule("gpu-request-without-limit", "error", "GPU request without an equal limit")
def gpu_request_without_limit(tree: Tree) -> Iterator[Hit]:
    for unit in tree.units:
        for i, c in unit.containers():
            res = c.get("resources") or {}
            req, lim = (res.get("requests") or {}).get(GPU), (res.get("limits") or {}).get(GPU)
            if req is not None and str(req) != str(lim):
                yield (
                    unit.doc,
                    at(unit, f"spec.containers[{i}].resources"),
                    "extended resources cannot be overcommitted: the API server rejects a GPU "
                    "request without an equal limit",
                    "set resources.limits.nvidia.com/gpu equal to the request (or only the limit)",
                )


@rule("unpinned-engine-image", "warning", "engine image without a fixed tag")
def unpinned_engine_image(tree: Tree) -> Iterator[Hit]:
    for unit, i, _ in _serving(tree):
        image = str((unit.spec.get("containers") or [])[i].get("image", ""))
        if "@sha256:" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
            yield (
                unit.doc,
                at(unit, f"spec.containers[{i}].image"),
                "`latest` pulls whatever vLLM shipped last (flags and metrics change between releases) and "
                "defaults imagePullPolicy to Always, re-pulling ~10 GB on every start",
                "pin a version tag or digest, e.g. vllm/vllm-openai:v0.32.0",
            )


@rule("lws-no-group-restart", "error", "multi-node group does not restart as a whole")
def lws_no_group_restart(tree: Tree) -> Iterator[Hit]:
    seen: set[tuple[str, str]] = set()
    for unit in tree.units:
        key = (unit.doc.oid, unit.path.rsplit(".leaderWorkerTemplate", 1)[0])
        if unit.group_size > 1 and unit.restart_policy in ("Default", "None") and key not in seen:
            seen.add(key)
            yield (
                unit.doc,
                f"{key[1]}.leaderWorkerTemplate.restartPolicy",
                "when one pod of a tensor/pipeline-parallel group restarts, the others keep "
                "waiting on a dead NCCL "
                "peer; the group hangs instead of recovering",
                "set restartPolicy: RecreateGroupOnPodRestart",
            )


# For rule modules beside this one (rules_tools): the serving containers and their model.
serving = _serving
model_of = _model
