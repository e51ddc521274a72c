"""The plan document: what `eksinfer plan --json` writes and `eksinfer render` reads.

Versioned by `schema_version`; a renderer refuses a major version it does not know. Pydantic here because it
is an edge (a file a person may edit): `extra="forbid"` and a description on every field so errors name it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from eksinfer.strict import StrictModel

PLAN_SCHEMA_VERSION = "eksinfer.plan/v1"

Precision = Literal["bf16", "fp8", "int4", "fp4", "mxfp4"]
Provisioning = Literal["auto-mode", "karpenter", "managed-node-group"]
# capacity-block: nodes launched into a Capacity Block for ML (Karpenter capacity type "reserved");
# reserved: on-demand nodes billed under a commitment (Reserved Instances / Savings Plans)
CapacityType = Literal["on-demand", "spot", "capacity-block", "reserved"]
RoleName = Literal["engine", "prefill", "decode"]


class PlanModel(StrictModel):
    id: str = Field(description="catalog id (e.g. llama-3.3-70b) or the config.json path's model name")
    hf_id: str = Field(
        description="Hugging Face repository id vLLM serves, e.g. meta-llama/Llama-3.3-70B-Instruct"
    )
    total_params_b: float = Field(description="total parameters, billions")
    active_params_b: float = Field(description="parameters active per token, billions (MoE < total)")
    is_moe: bool = Field(description="mixture-of-experts model")
    attention: Literal["gqa", "mla"] = Field(description="attention kind, decides the KV-cache layout")
    max_context: int = Field(description="model's maximum context length, tokens")


class PlanPromptClass(StrictModel):
    share: float = Field(description="share of requests of this class, 0..1")
    input_tokens: int = Field(description="prompt length, tokens")
    output_tokens: int = Field(description="generated length, tokens")


class PlanTraffic(StrictModel):
    input_tokens: int = Field(description="mean prompt length, tokens")
    output_tokens: int = Field(description="mean generated length, tokens")
    requests_per_s: float | None = Field(
        default=None, description="target arrival rate; None when concurrency given"
    )
    concurrency: int | None = Field(
        default=None, description="target concurrent requests; None when rate given"
    )
    shared_prefix_ratio: float = Field(
        default=0.0, description="share of prompt tokens reusable from cache, 0..1"
    )
    prompt_mix: list[PlanPromptClass] = Field(
        default_factory=list, description="classes of requests priced apart (plan --prompt-mix); empty: one"
    )


class PlanSlo(StrictModel):
    preset: str = Field(description="conversational, batch or custom")
    ttft_s: float = Field(description="time-to-first-token target, seconds")
    tpot_s: float = Field(description="time-per-output-token target, seconds")


class PlanInstance(StrictModel):
    type: str = Field(description="EC2 instance type, e.g. p5.48xlarge")
    family: str = Field(description="EC2 family, e.g. p5")
    gpu: str = Field(description="GPU name from the catalog, e.g. H100")
    gpus: int = Field(description="GPUs per instance")
    gpu_memory_gib: float = Field(description="memory of one GPU, GiB")
    vcpus: int = Field(description="vCPUs per instance")
    memory_gib: float | None = Field(
        default=None,
        description="host memory per instance, GiB (render sizes pods from it; absent: 4 per vCPU)",
    )
    efa_gbps: float = Field(description="EFA network bandwidth, Gbit/s (0 when the type has none)")
    capacity_type: CapacityType = Field(description="on-demand, spot, capacity-block or reserved")
    price_per_hour_usd: float = Field(description="price used for the cost, USD per instance-hour")
    price_date: str = Field(description="date of the price, ISO 8601")
    region: str = Field(default="us-east-1", description="region the price is for")
    price_book: str = Field(default="", description="price book the price comes from, e.g. aws-2026-08")
    price_source: str = Field(default="", description="where the book's prices come from")
    spot_price_date: str | None = Field(
        default=None, description="date of the spot discount used, when capacity_type is spot"
    )
    commitment: str | None = Field(
        default=None, description="what a capacity-block or reserved price stands for, with its date"
    )


class PlanEngine(StrictModel):
    """One vLLM engine (a replica). `vllm_args` is the command line, the other fields its structured form."""

    tensor_parallel_size: int = Field(ge=1, description="GPUs per pipeline stage")
    pipeline_parallel_size: int = Field(ge=1, description="pipeline stages (one per node when multi-node)")
    expert_parallel: bool = Field(description="--enable-expert-parallel for MoE")
    data_parallel_size: int = Field(
        ge=1, default=1, description="attention data-parallel ranks inside one engine"
    )
    precision: Precision = Field(description="weight precision")
    kv_cache_dtype: Literal["auto", "fp8"] = Field(description="--kv-cache-dtype")
    max_model_len: int = Field(ge=1, description="--max-model-len")
    gpu_memory_utilization: float = Field(gt=0, le=1, description="--gpu-memory-utilization")
    block_size: int = Field(ge=1, description="--block-size (KV block, tokens)")
    enable_prefix_caching: bool = Field(description="--enable-prefix-caching")
    max_num_seqs: int = Field(ge=1, description="--max-num-seqs")
    max_num_batched_tokens: int = Field(ge=1, description="--max-num-batched-tokens")
    gpus_per_replica: int = Field(ge=1, description="tensor x pipeline x data parallel")
    nodes_per_replica: int = Field(ge=1, description="instances one replica spans (>1 means LeaderWorkerSet)")
    vllm_args: list[str] = Field(description="arguments after `vllm serve MODEL`")
    env: dict[str, str] = Field(
        default_factory=dict, description="environment the engine container sets (vLLM kernel choices)"
    )


class PlanRole(StrictModel):
    name: RoleName = Field(description="engine (aggregated), or prefill / decode (disaggregated)")
    replicas: int = Field(ge=0, description="replicas of this role")
    engine: PlanEngine = Field(description="the engine configuration of this role")


class PlanNodes(StrictModel):
    provisioning: Provisioning = Field(description="how GPU nodes are provisioned")
    total_nodes: int = Field(description="instances across all roles")
    max_nodes: int = Field(description="node-tier autoscaling limit")
    mig_profile: str | None = Field(
        default=None, description="MIG profile, e.g. all-1g.10gb, when MIG is used"
    )
    needs_dra: bool = Field(default=False, description="workload uses Dynamic Resource Allocation")
    node_startup_s: float = Field(description="expected GPU node start-up (boot + image + weights), seconds")


class PlanRouting(StrictModel):
    strategy: Literal["round-robin", "kv-aware"] = Field(description="routing the gateway applies")
    gateway_preset: str = Field(description="eksinfer gateway --preset")


class PlanLoadPoint(StrictModel):
    requests_per_s: float = Field(description="arrival rate of the whole deployment (Poisson)")
    ttft_s: float | None = Field(description="mean TTFT, seconds; None when saturated")
    tpot_s: float = Field(description="mean TPOT, seconds")


class PlanClassPrediction(StrictModel):
    share: float = Field(description="share of requests of this class, 0..1")
    input_tokens: int = Field(description="prompt length, tokens")
    output_tokens: int = Field(description="generated length, tokens")
    ttft_s: float = Field(description="predicted mean time to first token of this class, seconds")
    remote_prefill: bool = Field(
        description="P/D: the gateway decider sends it to the prefill pool (uncached tokens >= 256)"
    )


class PlanPrediction(StrictModel):
    ttft_s: float = Field(description="predicted time to first token at the planned load, seconds")
    tpot_s: float = Field(description="predicted time per output token at the planned load, seconds")
    throughput_tokens_per_s: float = Field(description="output tokens/s of the whole deployment")
    requests_per_s: float = Field(description="requests/s the whole deployment sustains within the SLOs")
    max_concurrency_per_replica: int = Field(
        description="sequences of planned length that fit in KV per replica"
    )
    weight_gib_per_gpu: float = Field(description="model weights per GPU, GiB")
    kv_cache_gib_per_replica: float = Field(description="KV-cache memory per replica, GiB")
    num_gpu_blocks: int = Field(description="KV blocks per replica")
    load_time_s: float = Field(description="predicted model load time of one engine, seconds (sizes probes)")
    knee_requests_per_s: float | None = Field(
        default=None, description="arrival rate where mean request latency doubles (open loop, aggregated)"
    )
    saturation_requests_per_s: float | None = Field(
        default=None, description="arrival rate past which queues grow without bound; aggregated only"
    )
    load_curve: list[PlanLoadPoint] = Field(
        default_factory=list, description="open-loop mean TTFT / TPOT at fractions of saturation"
    )
    classes: list[PlanClassPrediction] = Field(
        default_factory=list, description="per class of a prompt mix: its TTFT and where it prefills"
    )


class PlanPriceComparison(StrictModel):
    book: str = Field(description="another dated price book, e.g. reference (2025)")
    as_of: str = Field(description="date of that book's prices, ISO 8601")
    price_per_hour_usd: float | None = Field(description="the same instance type there; None: not priced")
    monthly_usd: float | None = Field(description="the same nodes for a month at that price")


class PlanGround(StrictModel):
    """Whether measured runs stand behind this plan's path, and the range its predictions may be off by."""

    measured: bool = Field(description="False when part of the path (PP, P/D, MIG, GPU, MoE) has no runs")
    basis: str = Field(description="what the prediction rests on, or why it is unmeasured")
    warnings: list[str] = Field(default_factory=list, description="one line per unmeasured part of the path")
    ttft_s: tuple[float, float] = Field(description="range expected for the mean TTFT, seconds")
    tpot_s: tuple[float, float] = Field(description="range expected for the mean TPOT, seconds")
    throughput_tokens_per_s: tuple[float, float] = Field(
        description="range expected for the deployment's output tokens/s"
    )


class PlanStack(StrictModel):
    """Which step of the migration path (`plan --phase N`) this plan renders; absent: the full stack."""

    phase: Literal["1", "1.5", "2", "3", "4"] = Field(description="migration phase the stack belongs to")
    components: list[str] = Field(description="what the phase's stack is made of, in the order it arrived")
    gpu_operator: bool = Field(description="NVIDIA GPU Operator installed (phase 1.5 on)")
    autoscaling: Literal["load", "slo"] = Field(
        description="load: KEDA on running / waiting / KV use; slo: also p90 TTFT against the SLO (phase 4)"
    )
    without: list[str] = Field(
        default_factory=list, description="components of the phase left out on request (plan --without)"
    )


class PlanCost(StrictModel):
    hours_per_month: float = Field(default=720.0, description="hours billed a month")
    monthly_usd: float = Field(description="instances x price x hours")
    per_million_tokens_usd: float = Field(
        description="monthly cost / (tokens a month at the planned load) x 1e6"
    )
    comparisons: list[PlanPriceComparison] = Field(
        default_factory=list, description="the same nodes priced by the other dated books, for comparison"
    )


class PlanOnPrem(StrictModel):
    gpu: str = Field(description="GPU model of the on-prem nodes")
    gpus: int = Field(description="GPUs available on-prem")
    replicas: int = Field(ge=0, description="engine replicas placed on hybrid nodes")


class PlanAlternative(StrictModel):
    instance_type: str = Field(description="EC2 instance type")
    mode: Literal["aggregated", "disaggregated"] = Field(description="serving mode")
    tensor_parallel_size: int = Field(description="TP")
    pipeline_parallel_size: int = Field(description="PP")
    data_parallel_size: int = Field(default=1, description="DP attention ranks (MoE with expert parallelism)")
    precision: Precision = Field(description="weight precision")
    kv_cache_dtype: Literal["auto", "fp8"] = Field(default="auto", description="--kv-cache-dtype")
    replicas: int = Field(ge=0, description="replicas (all roles)")
    monthly_usd: float = Field(description="monthly cost")
    per_million_tokens_usd: float = Field(description="cost per million tokens")
    ttft_s: float = Field(description="predicted TTFT")
    tpot_s: float = Field(description="predicted TPOT")
    measured: bool = Field(default=True, description="False when the path has no measured runs behind it")


class PlanFallback(StrictModel):
    """The managed tier a gateway falls back to when every self-hosted pool of the model fails or sheds."""

    kind: Literal["bedrock"] = Field(default="bedrock", description="managed service; Amazon Bedrock")
    region: str = Field(description="AWS region the gateway calls Bedrock Runtime in")
    model_id: str = Field(description="the id the gateway calls: model id, inference-profile id or ARN")
    inference_profile: bool = Field(description="model_id is a cross-Region inference profile")
    match: Literal["same", "close", "chosen"] = Field(
        description="same model as served, a close one (see why.fallback), or chosen with --bedrock-model"
    )
    source: str = Field(default="", description="where the model id comes from (a Bedrock model card)")
    as_of: str = Field(default="", description="date the model id was checked, ISO 8601")


class Plan(StrictModel):
    schema_version: str = Field(default=PLAN_SCHEMA_VERSION, description="plan document version")
    name: str = Field(description="deployment name, DNS-1123, used for Kubernetes object names")
    tier: Literal[1, 2, 3] = Field(description="1: one GPU; 2: TP 4-8 single node; 3: multi-node MoE")
    mode: Literal["aggregated", "disaggregated"] = Field(description="prefill/decode together or split")
    model: PlanModel = Field(description="the model served")
    traffic: PlanTraffic = Field(description="the traffic planned for")
    slo: PlanSlo = Field(description="latency targets")
    instance: PlanInstance = Field(description="the GPU instance type")
    roles: list[PlanRole] = Field(
        description="one role (engine) when aggregated; prefill and decode otherwise"
    )
    nodes: PlanNodes = Field(description="node provisioning")
    routing: PlanRouting = Field(description="gateway routing")
    prediction: PlanPrediction = Field(description="what the performance model predicts")
    ground: PlanGround | None = Field(
        default=None, description="measured or unmeasured ground under the prediction, with its band"
    )
    cost: PlanCost = Field(description="cost")
    on_prem: PlanOnPrem | None = Field(default=None, description="on-prem (EKS Hybrid Nodes) pool, when any")
    fallback: PlanFallback | None = Field(
        default=None, description="last tier of the gateway's cascade (Amazon Bedrock); None: no fallback"
    )
    stack: PlanStack | None = Field(
        default=None, description="the migration phase this plan renders (plan --phase); None: full stack"
    )
    why: dict[str, str] = Field(description="one short reason per choice: tier, instance, parallelism, ...")
    alternatives: list[PlanAlternative] = Field(default_factory=list, description="runners-up, best first")
