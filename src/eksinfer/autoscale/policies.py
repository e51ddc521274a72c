"""Scaling policies the what-if compares; each is what a cluster would run, so the winner can be rendered.

    static[:N]            N replicas all day (default: the trace's peak 5-minute rate / SLO capacity)
    keda-queue[:T]        KEDA on sum(vllm:num_requests_waiting), T per replica (render's default)
    keda-running[:T]      KEDA on sum(vllm:num_requests_running)
    keda-kv[:T]           KEDA on sum(vllm:kv_cache_usage_perc)
    keda-ttft[:T]         KEDA on the P90 TTFT over 2 minutes (Value: replicas x P90 / T)
    keda-render           all four triggers, as `render` writes them today (the HPA takes the largest)
    slo-predictive[:U]    KEDA on a forecast: the request rate `lead` seconds ahead, in replicas of SLO
                          capacity at utilisation U (default 0.8)

The KEDA policies use render's polling interval and HPA behaviour (deploy/autoscale.py). The SLO-predictive
policy is our own, after the idea of NVIDIA Dynamo's SLA planner (ai-dynamo/dynamo, docs "Planner Design":
predict the next interval's load, turn it into replicas through profiled TTFT/ITL vs load): here the
forecast is Prometheus' `predict_linear` over the last 30 minutes of the per-minute request rate, evaluated
`lead` = node start-up + one polling interval ahead (capacity asked for now arrives after that), floored at
the last minute's rate; replicas = forecast x work factor / (SLO capacity x U), where the SLO capacity comes
from the plan's load curve (capacity.py) and the work factor scales it to the trace's token mix. Because it
is one Prometheus query and one threshold, it renders as a KEDA trigger. Scale-up is not rate-limited (the
forecast already leads); scale-down keeps render's stabilisation window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from eksinfer.autoscale.capacity import FleetSpec
from eksinfer.autoscale.hpa import Behavior, Keda, MetricSample
from eksinfer.errors import ConfigError

FORECAST_WINDOW_MIN = 30
KEDA_TRIGGERS = ("queue", "running", "kv-cache", "ttft")
KEDA_SINGLE = {"keda-queue": "queue", "keda-running": "running", "keda-kv": "kv-cache", "keda-ttft": "ttft"}
POLICY_NAMES = ("static", *KEDA_SINGLE, "keda-render", "slo-predictive")


@dataclass(slots=True)
class Observation:
    """What a policy sees at one polling instant (Prometheus' view of the fleet)."""

    now: float
    current: int  # replicas asked for (the Deployment's spec.replicas)
    ready: int
    waiting: int  # sum(vllm:num_requests_waiting)
    running: int  # sum(vllm:num_requests_running)
    kv_usage: float  # sum(vllm:kv_cache_usage_perc)
    ttft_p90_s: float | None  # over the last 2 minutes; None without first tokens
    rate_per_min: Sequence[float] = field(default_factory=list)  # arrivals/s of each past whole minute


def predict_linear(values: Sequence[float], ahead: float) -> float:
    """Least-squares line through (i, values[i]) evaluated `ahead` steps after the last point (Prometheus'
    `predict_linear`, in steps instead of seconds)."""
    n = len(values)
    if n == 0:
        return 0.0
    if n == 1:
        return values[0]
    mean_x = (n - 1) / 2
    mean_y = sum(values) / n
    sxx = sum((i - mean_x) ** 2 for i in range(n))
    sxy = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    slope = sxy / sxx
    return mean_y + slope * (n - 1 - mean_x + ahead)


class Policy:
    """A named policy: `initial(rate)` replicas at the start, `decide(obs)` every `interval_s`."""

    name: str
    interval_s: float = 15.0

    def initial(self, rate_per_s: float) -> int:
        raise NotImplementedError

    def decide(self, obs: Observation) -> int:
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        return {"policy": self.name}


class StaticPolicy(Policy):
    def __init__(self, replicas: int) -> None:
        self.name = f"static:{replicas}"
        self.replicas = replicas
        self.interval_s = math.inf

    def initial(self, rate_per_s: float) -> int:
        return self.replicas

    def decide(self, obs: Observation) -> int:
        return self.replicas

    def describe(self) -> dict[str, object]:
        return {"policy": "static", "replicas": self.replicas}


class KedaPolicy(Policy):
    """A ScaledObject: triggers with thresholds, render's behaviour."""

    def __init__(
        self,
        name: str,
        thresholds: dict[str, float],
        behavior: Behavior,
        spec: FleetSpec,
        *,
        utilization: float = 0.8,
        work_factor: float = 1.0,
    ) -> None:
        self.name = name
        self.thresholds = thresholds
        self.behavior = behavior
        self.interval_s = behavior.polling_s
        self.keda = Keda(behavior)
        self.spec = spec
        self.utilization = utilization
        self.work_factor = work_factor
        self.lead_s = spec.node_startup_s + behavior.polling_s

    def capacity(self) -> float:
        """Requests/s one replica takes at the target utilisation, in the trace's token mix."""
        return self.spec.capacity_per_replica * self.utilization / self.work_factor

    def initial(self, rate_per_s: float) -> int:
        want = math.ceil(rate_per_s / self.capacity()) if rate_per_s > 0 else 1
        return min(max(want, self.behavior.min_replicas, 1), self.behavior.max_replicas)

    def samples(self, obs: Observation) -> list[MetricSample]:
        out = []
        th = self.thresholds
        if "queue" in th:
            out.append(MetricSample(obs.waiting, th["queue"], activation=1.0))
        if "running" in th:
            out.append(MetricSample(obs.running, th["running"]))
        if "kv-cache" in th:
            out.append(MetricSample(obs.kv_usage, th["kv-cache"]))
        if "ttft" in th and obs.ttft_p90_s is not None:
            out.append(MetricSample(obs.ttft_p90_s, th["ttft"], average=False))
        if "forecast" in th:
            rates = list(obs.rate_per_min)[-FORECAST_WINDOW_MIN:]
            now_rate = rates[-1] if rates else 0.0
            ahead = predict_linear(rates, self.lead_s / 60.0) if len(rates) >= 5 else now_rate
            out.append(MetricSample(max(now_rate, ahead), th["forecast"]))
        return out

    def decide(self, obs: Observation) -> int:
        return self.keda.evaluate(obs.now, obs.current, self.samples(obs))

    def describe(self) -> dict[str, object]:
        b = self.behavior
        return {
            "policy": self.name.split(":")[0],
            "thresholds": dict(self.thresholds),
            "behavior": {
                "min_replicas": b.min_replicas,
                "max_replicas": b.max_replicas,
                "polling_s": b.polling_s,
                "cooldown_s": b.cooldown_s,
                "up_window_s": b.up_window_s,
                "up_pods": b.up_pods,
                "up_period_s": b.up_period_s,
                "down_window_s": b.down_window_s,
                "down_pods": b.down_pods,
                "down_period_s": b.down_period_s,
            },
            "lead_s": self.lead_s,
        }


def render_behavior(spec: FleetSpec, min_replicas: int) -> Behavior:
    from eksinfer.deploy.autoscale import behavior_numbers

    startup = max(60, math.ceil(spec.node_startup_s))
    n = behavior_numbers(startup, spec.planned_replicas)
    return Behavior(
        min_replicas=min_replicas,
        max_replicas=spec.max_replicas,
        polling_s=n["polling_s"],
        cooldown_s=n["cooldown_s"],
        up_window_s=n["up_window_s"],
        up_pods=n["up_pods"],
        up_period_s=n["up_period_s"],
        down_window_s=n["down_window_s"],
        down_pods=n["down_pods"],
        down_period_s=n["down_period_s"],
    )


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}: the parameter must be a positive number, got {text!r}", field="--policy")
    return value


def make_policy(
    text: str, spec: FleetSpec, render_thresholds: dict[str, float], *, peak_replicas: int, work_factor: float
) -> Policy:
    """`NAME[:VALUE]` -> a policy (see the module docstring)."""
    name, _, arg = text.strip().partition(":")
    if name not in POLICY_NAMES:
        raise ConfigError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}", field="--policy")
    min_replicas = min(2, max(1, spec.planned_replicas))  # render's floor (deploy/autoscale.min_replicas)
    behavior = render_behavior(spec, min_replicas)
    if name == "static":
        n = int(_number(arg, name)) if arg else peak_replicas
        return StaticPolicy(min(n, spec.max_replicas))
    if name == "keda-render":
        if arg:
            raise ConfigError("keda-render takes no parameter", field="--policy")
        return KedaPolicy(name, dict(render_thresholds), behavior, spec, work_factor=work_factor)
    if name == "slo-predictive":
        u = _number(arg, name) if arg else 0.8
        if u > 1:
            raise ConfigError(f"{name}: utilisation must be in (0, 1], got {u:g}", field="--policy")
        predictive = Behavior(
            min_replicas=behavior.min_replicas,
            max_replicas=behavior.max_replicas,
            polling_s=behavior.polling_s,
            cooldown_s=behavior.cooldown_s,
            up_window_s=0.0,
            up_pods=behavior.max_replicas,
            up_period_s=behavior.polling_s,
            down_window_s=behavior.down_window_s,
            down_pods=behavior.down_pods,
            down_period_s=behavior.down_period_s,
        )
        policy = KedaPolicy(f"{name}:{u:g}", {}, predictive, spec, utilization=u, work_factor=work_factor)
        policy.thresholds["forecast"] = policy.capacity()
        return policy
    trigger = KEDA_SINGLE[name]
    threshold = _number(arg, name) if arg else render_thresholds[trigger]
    return KedaPolicy(f"{name}:{threshold:g}", {trigger: threshold}, behavior, spec, work_factor=work_factor)
