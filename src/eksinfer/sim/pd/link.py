"""How fast a simulated NIXL transfer moves KV blocks between a prefill and a decode engine.

    nvlink  both engines in one node: each of the engine's TP GPUs moves its shard to its peer over NVLink
            (GPU `nvlink_gbps`, per direction; PCIe where the GPU has no NVLink) -> tp x that, GB/s
    efa     different nodes with EFA: the engine's TP GPUs use their share of the node's EFA bandwidth
            (instance `efa_gbps` / 8 x tp / GPUs per node, GB/s; a p5.48xlarge GPU gets 400 Gb/s)
    tcp     different nodes without EFA (no vpc.amazonaws.com/efa resources in the pod): UCX over TCP at one
            flow's rate, catalog.hardware.TCP_FLOW_GBPS / 8 GB/s

The instance is the catalog's EC2 type for the GPU with the most EFA bandwidth (p5.48xlarge for H100).
`--kv-link-gbps` replaces the figure (Gbit/s). Transfer time = bytes / bandwidth; no latency term is added
(the side-channel round trips the simulator really makes stand for it).
"""

from __future__ import annotations

from eksinfer.catalog import get_gpu, list_instances
from eksinfer.catalog.hardware import TCP_FLOW_GBPS
from eksinfer.errors import ConfigError


def link_gbytes_per_s(
    kind: str, gpu: str, tensor_parallel_size: int, override_gbps: float | None = None
) -> float:
    """GB/s one engine's KV moves at over `kind` (see the module docstring); ConfigError when the GPU's
    instances have no EFA and `kind` is efa."""
    if override_gbps is not None:
        return override_gbps / 8
    tp = max(tensor_parallel_size, 1)
    if kind == "nvlink":
        return get_gpu(gpu).interconnect_gbps * tp
    if kind == "tcp":
        return TCP_FLOW_GBPS / 8
    spec = get_gpu(gpu)
    hosts = [i for i in list_instances() if i.gpu == spec.name and i.efa_gbps > 0]
    if not hosts:
        raise ConfigError(
            f"no catalog instance with EFA carries {spec.name}; use tcp or --kv-link-gbps", field="--kv-link"
        )
    best = max(hosts, key=lambda i: (i.efa_gbps / i.gpus, i.type))
    return best.efa_gbps / 8 * min(tp, best.gpus) / best.gpus


def transfer_s(num_bytes: int, gbytes_per_s: float) -> float:
    return num_bytes / (gbytes_per_s * 1e9) if num_bytes > 0 else 0.0
