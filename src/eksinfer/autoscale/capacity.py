"""What the fleet simulation takes from a plan: one replica's engine, its nodes, prices and start-up times.

Only aggregated plans (one `engine` role) are simulated: a P/D fleet would need the prefill -> decode hop.
Per-replica SLO capacity (requests/s one replica serves within the targets) interpolates the plan's open-loop
load curve: the largest rate whose mean TTFT x 2 and mean TPOT x 1.1 meet the SLO (the planner's P99
allowances, planner/evaluate.py), divided by the planned replicas. Dynamo's SLA planner reads the same kind
of curve from profiling (TTFT and ITL against load) to turn a predicted request rate into replicas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from eksinfer.errors import ConfigError
from eksinfer.planner.schema import Plan, PlanRole
from eksinfer.sim.core import CoreConfig

if TYPE_CHECKING:
    from eksinfer.perf import EnginePerf

TTFT_P99_ALLOWANCE = 2.0  # planner: mean TTFT x 2 must meet the TTFT target
TPOT_P99_ALLOWANCE = 1.1  # planner: mean TPOT x 1.1 must meet the TPOT target


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """Everything the simulation needs to know about one deployment (from a plan)."""

    core: CoreConfig
    model: str
    gpu: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    data_parallel_size: int
    precision: str
    kv_cache_dtype: str
    planned_replicas: int
    replicas_per_node: int  # slots one node has (>= 1)
    gpus_per_node: int
    node_price_per_hour: float
    node_startup_s: float  # new node: boot + image pull + model load
    pod_startup_s: float  # pod on a node that is up and has the image: model load
    consolidate_after_s: float  # Karpenter removes a node empty this long
    max_replicas: int
    ttft_slo_s: float
    tpot_slo_s: float
    capacity_per_replica: float  # requests/s within the SLOs at the plan's token means
    input_tokens: int
    output_tokens: int


def engine_role(plan: Plan) -> PlanRole:
    roles = [r for r in plan.roles if r.name == "engine"]
    if plan.mode != "aggregated" or not roles:
        raise ConfigError("autoscale simulates aggregated plans only (one engine role)", field="mode")
    return roles[0]


def slo_capacity(plan: Plan, replicas: int) -> float:
    """Requests/s per replica within the SLOs, interpolated on the plan's load curve."""
    pred = plan.prediction
    slo = plan.slo
    best = 0.0
    prev: tuple[float, float] | None = None  # (rate, slack) of the previous point; slack >= 0 meets the SLO
    for point in pred.load_curve:
        if point.ttft_s is None:
            slack = -1.0
        else:
            slack = min(
                1 - TTFT_P99_ALLOWANCE * point.ttft_s / slo.ttft_s,
                1 - TPOT_P99_ALLOWANCE * point.tpot_s / slo.tpot_s,
            )
        if slack >= 0:
            best = point.requests_per_s
        elif prev is not None and prev[1] >= 0:
            # linear in slack between the last point that meets the SLO and the first that does not
            r0, s0 = prev
            best = r0 + (point.requests_per_s - r0) * s0 / (s0 - slack)
            break
        else:
            break
        prev = (point.requests_per_s, slack)
    if best <= 0:
        best = pred.requests_per_s
    return best / max(1, replicas)


def fleet_spec(plan: Plan) -> FleetSpec:
    role = engine_role(plan)
    eng = role.engine
    inst = plan.instance
    if eng.nodes_per_replica > 1:
        raise ConfigError("autoscale simulates replicas that fit on one node", field="nodes_per_replica")
    per_node = max(1, inst.gpus // eng.gpus_per_replica)
    startup = plan.nodes.node_startup_s
    core = CoreConfig(
        num_gpu_blocks=plan.prediction.num_gpu_blocks,
        block_size=eng.block_size,
        max_num_seqs=eng.max_num_seqs,
        max_num_batched_tokens=eng.max_num_batched_tokens,
        max_model_len=eng.max_model_len,
        enable_prefix_caching=eng.enable_prefix_caching,
        natural_output_tokens=0,
    )
    return FleetSpec(
        core=core,
        model=plan.model.id,
        gpu=inst.gpu,
        tensor_parallel_size=eng.tensor_parallel_size,
        pipeline_parallel_size=eng.pipeline_parallel_size,
        data_parallel_size=eng.data_parallel_size,
        precision=eng.precision,
        kv_cache_dtype=eng.kv_cache_dtype,
        planned_replicas=role.replicas,
        replicas_per_node=per_node,
        gpus_per_node=inst.gpus,
        node_price_per_hour=inst.price_per_hour_usd,
        node_startup_s=startup,
        pod_startup_s=plan.prediction.load_time_s,
        consolidate_after_s=max(300.0, math.ceil(startup)),  # what render writes (deploy/nodes.py)
        max_replicas=max(role.replicas, plan.nodes.max_nodes * per_node),
        ttft_slo_s=plan.slo.ttft_s,
        tpot_slo_s=plan.slo.tpot_s,
        capacity_per_replica=slo_capacity(plan, role.replicas),
        input_tokens=plan.traffic.input_tokens,
        output_tokens=plan.traffic.output_tokens,
    )


def build_perf(spec: FleetSpec) -> EnginePerf:
    """The performance model of one replica (lazy: heavy catalog data)."""
    from eksinfer.catalog import get_gpu, get_model
    from eksinfer.perf import build_engine_perf

    return build_engine_perf(
        get_model(spec.model),
        get_gpu(spec.gpu),
        tensor_parallel_size=spec.tensor_parallel_size,
        pipeline_parallel_size=spec.pipeline_parallel_size,
        data_parallel_size=spec.data_parallel_size,
        precision=spec.precision,
        kv_cache_dtype=spec.kv_cache_dtype,
        block_size=spec.core.block_size,
        max_model_len=spec.core.max_model_len,
        num_gpu_blocks=spec.core.num_gpu_blocks,
        max_num_batched_tokens=spec.core.max_num_batched_tokens,
        max_num_seqs=spec.core.max_num_seqs,
    )
