"""Built-in presets: named profiles a user picks with `--preset NAME` or `routing.preset`.

round-robin    cycle through healthy endpoints (the Kubernetes Service baseline)
load           least loaded: queue depth (2), in-flight prompt tokens (2), KV usage (1), max score
approx-prefix  router-side prefix estimate (3) + queue (2) + KV usage (2): llm-d's default weights
               (prefix 3, queue 2, kv-cache-utilization 2; pkg/epp/config/loader/defaults.go)
kv-aware       the default: precise prefix from KV events traded against queued work in one cost
               (kv-cost-scorer), behind the saturation gate; session affinity as a weak tie-breaker
"""

from __future__ import annotations

from eksinfer.gateway.scheduling.config import PluginRef, ProfileConfig


def _ref(type_: str, weight: float = 1.0, **parameters: object) -> PluginRef:
    return PluginRef(type=type_, weight=weight, parameters=dict(parameters))


def builtin_presets() -> dict[str, ProfileConfig]:
    """Fresh profile configs for every preset (callers may mutate their copy)."""
    healthy = _ref("healthy-filter")
    return {
        "round-robin": ProfileConfig(filters=[healthy], picker=_ref("round-robin-picker")),
        "load": ProfileConfig(
            filters=[healthy],
            scorers=[
                _ref("queue-scorer", 2),
                _ref("token-load-scorer", 2),
                _ref("kv-cache-utilization-scorer", 1),
            ],
            picker=_ref("max-score-picker"),
        ),
        "approx-prefix": ProfileConfig(
            filters=[healthy],
            scorers=[
                _ref("approx-prefix-cache-scorer", 3),
                _ref("queue-scorer", 2),
                _ref("kv-cache-utilization-scorer", 2),
            ],
            picker=_ref("max-score-picker"),
        ),
        "kv-aware": ProfileConfig(
            filters=[healthy, _ref("saturation-filter")],
            scorers=[
                _ref("kv-cost-scorer", 1),
                _ref("prefix-affinity-scorer", 0.5),
                _ref("session-affinity-scorer", 0.05),
            ],
            picker=_ref("max-score-picker"),
        ),
    }


PRESET_NAMES = ("kv-aware", "approx-prefix", "load", "round-robin")
