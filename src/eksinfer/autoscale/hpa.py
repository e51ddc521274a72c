"""KEDA + the Horizontal Pod Autoscaler in virtual time: how a ScaledObject turns metrics into replicas.

KEDA (kedacore/keda v2.20) serves each trigger's metric to the HPA and polls every `pollingInterval`; it
scales 0 <-> 1 itself: to 0 only after every trigger has been inactive (metric <= activationThreshold) for
`cooldownPeriod`, which is why `cooldownPeriod` does nothing when `minReplicaCount` >= 1. Above zero the HPA
decides (kubernetes pkg/controller/podautoscaler/horizontal.go, autoscaling/v2):

1. per metric: AverageValue -> desired = ceil(total / threshold); Value -> ceil(current x value / threshold);
   a ratio within the 10% tolerance keeps the current count; several metrics -> the largest;
2. stabilisation: the recommendation is kept with its time; scale up to at most the smallest recommendation
   of the last `scaleUp.stabilizationWindowSeconds`, down to at least the largest of the last
   `scaleDown.stabilizationWindowSeconds`;
3. rate limits: a Pods policy allows `value` pods added (removed) per `periodSeconds`, counted from the scale
   events inside the period;
4. clamp to [minReplicaCount, maxReplicaCount].
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

HPA_TOLERANCE = 0.1  # kube-controller-manager --horizontal-pod-autoscaler-tolerance default


@dataclass(frozen=True, slots=True)
class Behavior:
    """A ScaledObject's scaling numbers (render writes them in `advanced.horizontalPodAutoscalerConfig`)."""

    min_replicas: int
    max_replicas: int
    polling_s: float = 15.0
    cooldown_s: float = 300.0
    up_window_s: float = 0.0
    up_pods: int = 4
    up_period_s: float = 15.0
    down_window_s: float = 300.0
    down_pods: int = 1
    down_period_s: float = 60.0


@dataclass(frozen=True, slots=True)
class MetricSample:
    """One trigger's reading: AverageValue (a total over the threshold) or Value (scaled by replicas)."""

    value: float
    threshold: float
    average: bool = True
    activation: float = 0.0


def metric_desired(sample: MetricSample, current: int) -> int:
    if sample.average:
        if current == 0:
            return math.ceil(sample.value / sample.threshold)
        ratio = sample.value / (sample.threshold * current)
    else:
        ratio = sample.value / sample.threshold
    if abs(ratio - 1.0) <= HPA_TOLERANCE:
        return current
    return math.ceil(ratio * max(current, 1))


class Keda:
    """One ScaledObject and its HPA; `evaluate(now, current, samples)` returns the new replica count."""

    def __init__(self, behavior: Behavior) -> None:
        self.b = behavior
        self._recommendations: deque[tuple[float, int]] = deque()
        self._events: deque[tuple[float, int]] = deque()  # (time, replicas added (+) or removed (-))
        self._last_active = -math.inf

    def evaluate(self, now: float, current: int, samples: list[MetricSample]) -> int:
        b = self.b
        active = any(s.value > s.activation for s in samples)
        if active:
            self._last_active = now
        if current == 0:
            return max(1, b.min_replicas) if active else 0
        if b.min_replicas == 0 and not active and now - self._last_active >= b.cooldown_s:
            self._record(now, -current)
            return 0
        raw = max((metric_desired(s, current) for s in samples), default=current)
        new = self._stabilize(now, current, raw)
        new = self._rate_limit(now, current, new)
        new = min(max(new, max(1, b.min_replicas)), b.max_replicas)
        if new != current:
            self._record(now, new - current)
        return new

    def _stabilize(self, now: float, current: int, raw: int) -> int:
        b = self.b
        recs = self._recommendations
        recs.append((now, raw))
        horizon = max(b.up_window_s, b.down_window_s)
        while recs and recs[0][0] < now - horizon:
            recs.popleft()
        up = down = raw
        for t, r in recs:
            if t >= now - b.up_window_s:
                up = min(up, r)
            if t >= now - b.down_window_s:
                down = max(down, r)
        result = current
        if result < up:
            result = up
        if result > down:
            result = down
        return result

    def _rate_limit(self, now: float, current: int, desired: int) -> int:
        b = self.b
        if desired > current:
            added = sum(d for t, d in self._events if d > 0 and t > now - b.up_period_s)
            return min(desired, current - added + b.up_pods)
        if desired < current:
            removed = -sum(d for t, d in self._events if d < 0 and t > now - b.down_period_s)
            return max(desired, current + removed - b.down_pods)
        return desired

    def _record(self, now: float, delta: int) -> None:
        self._events.append((now, delta))
        horizon = max(self.b.up_period_s, self.b.down_period_s)
        while self._events and self._events[0][0] <= now - horizon:
            self._events.popleft()
