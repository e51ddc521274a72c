"""Built-in routing plugins, one class per module under filters/, scorers/ and pickers/."""

from __future__ import annotations

from typing import Any


def builtin_plugin_classes() -> list[Any]:
    """Every built-in plugin class (imported here, not at package import, to keep `eksinfer --help` fast)."""
    from eksinfer.gateway.scheduling.plugins.filters.healthy import HealthyFilter
    from eksinfer.gateway.scheduling.plugins.filters.saturation import SaturationFilter
    from eksinfer.gateway.scheduling.plugins.pickers.max_score import MaxScorePicker
    from eksinfer.gateway.scheduling.plugins.pickers.random_pick import RandomPicker
    from eksinfer.gateway.scheduling.plugins.pickers.round_robin import RoundRobinPicker
    from eksinfer.gateway.scheduling.plugins.pickers.softmax import SoftmaxPicker
    from eksinfer.gateway.scheduling.plugins.pickers.weighted_random import WeightedRandomPicker
    from eksinfer.gateway.scheduling.plugins.scorers.approx_prefix import ApproxPrefixCacheScorer
    from eksinfer.gateway.scheduling.plugins.scorers.kv_cost import KvCostScorer
    from eksinfer.gateway.scheduling.plugins.scorers.kv_utilization import KvCacheUtilizationScorer
    from eksinfer.gateway.scheduling.plugins.scorers.lora_affinity import LoraAffinityScorer
    from eksinfer.gateway.scheduling.plugins.scorers.precise_prefix import PrecisePrefixCacheScorer
    from eksinfer.gateway.scheduling.plugins.scorers.prefix_affinity import PrefixAffinityScorer
    from eksinfer.gateway.scheduling.plugins.scorers.queue import QueueScorer
    from eksinfer.gateway.scheduling.plugins.scorers.session_affinity import SessionAffinityScorer
    from eksinfer.gateway.scheduling.plugins.scorers.token_load import TokenLoadScorer

    return [
        HealthyFilter,
        SaturationFilter,
        MaxScorePicker,
        RandomPicker,
        RoundRobinPicker,
        SoftmaxPicker,
        WeightedRandomPicker,
        ApproxPrefixCacheScorer,
        KvCostScorer,
        KvCacheUtilizationScorer,
        LoraAffinityScorer,
        PrecisePrefixCacheScorer,
        PrefixAffinityScorer,
        QueueScorer,
        SessionAffinityScorer,
        TokenLoadScorer,
    ]
