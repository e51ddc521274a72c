"""The recommendation file: the policy `eksinfer autoscale` found best, in a form `render --autoscale` reads.

Written as JSON (schema `eksinfer.autoscale/v1`). `render` turns `triggers` into the ScaledObject's
Prometheus triggers (same queries as its defaults; `forecast` is the SLO-predictive query), `behavior` into
the HPA behaviour, and `max_nodes` into the NodePool's GPU limit.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from eksinfer.strict import StrictModel

RECOMMENDATION_SCHEMA = "eksinfer.autoscale/v1"
TriggerName = Literal["queue", "running", "kv-cache", "ttft", "forecast"]


class RecommendedTrigger(StrictModel):
    name: TriggerName = Field(description="which metric: queue, running, kv-cache, ttft or forecast")
    threshold: float = Field(gt=0, description="per-replica target (AverageValue) or the TTFT target in s")
    lead_s: float = Field(default=0.0, ge=0, description="forecast only: seconds ahead to predict")
    window_min: int = Field(default=30, ge=2, description="forecast only: minutes of rate history to fit")


class RecommendedBehavior(StrictModel):
    min_replicas: int = Field(ge=0, description="minReplicaCount")
    max_replicas: int = Field(ge=1, description="maxReplicaCount")
    polling_s: int = Field(ge=1, description="pollingInterval")
    cooldown_s: int = Field(ge=0, description="cooldownPeriod (only used for scaling to zero)")
    up_window_s: int = Field(ge=0, description="scaleUp stabilizationWindowSeconds")
    up_pods: int = Field(ge=1, description="scaleUp Pods policy value")
    up_period_s: int = Field(ge=1, description="scaleUp Pods policy periodSeconds")
    down_window_s: int = Field(ge=0, description="scaleDown stabilizationWindowSeconds")
    down_pods: int = Field(ge=1, description="scaleDown Pods policy value")
    down_period_s: int = Field(ge=1, description="scaleDown Pods policy periodSeconds")


class RecommendedEvidence(StrictModel):
    trace: str = Field(description="the trace the policies were compared on")
    requests: int = Field(description="requests in the trace")
    attainment: float = Field(description="share of requests within the TTFT and TPOT targets")
    gpu_hours: float = Field(description="GPU-hours the policy used over the trace")
    cost_usd: float = Field(description="node cost over the trace")
    compared: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="every policy tried: attainment and GPU-hours"
    )


class Recommendation(StrictModel):
    schema_version: Literal["eksinfer.autoscale/v1"] = Field(description="file format version")
    plan: str = Field(description="name of the plan the simulation used")
    policy: str = Field(description="the recommended policy, as `--policy` takes it")
    static_replicas: int | None = Field(
        default=None, ge=1, description="static policy: the fixed replica count (no triggers)"
    )
    triggers: list[RecommendedTrigger] = Field(default_factory=list, description="KEDA triggers to write")
    behavior: RecommendedBehavior = Field(description="ScaledObject scaling numbers")
    max_nodes: int = Field(ge=1, description="NodePool limit in nodes (written as GPUs)")
    evidence: RecommendedEvidence = Field(description="what the recommendation rests on")
